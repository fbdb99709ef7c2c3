import Foundation
import WarmpoolJSON
import Yams

/// Checks JSON answers against Protocol/openapi.yaml: the subset of OpenAPI 3.0 schemas the
/// document uses ($ref, allOf, type, nullable, enum, required, properties, additionalProperties,
/// items, pattern, format date-time, minimum/maximum).
struct OpenAPIDocument {
    let root: [String: Any]

    init(path: String) throws {
        let text = try String(contentsOfFile: path, encoding: .utf8)
        guard let root = try Yams.load(yaml: text) as? [String: Any] else { throw HarnessError("\(path) is not a YAML mapping") }
        self.root = root
    }

    static func locate() throws -> String {
        var directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        while directory.pathComponents.count > 1 {
            let candidate = directory.appendingPathComponent("Protocol/openapi.yaml").path
            if FileManager.default.fileExists(atPath: candidate) { return candidate }
            directory.deleteLastPathComponent()
        }
        throw HarnessError("Protocol/openapi.yaml not found above \(#filePath)")
    }

    /// Every documented (METHOD, path template).
    var operations: Set<String> {
        var result = Set<String>()
        for (path, item) in root["paths"] as? [String: Any] ?? [:] {
            for method in (item as? [String: Any] ?? [:]).keys { result.insert("\(method.uppercased()) \(path)") }
        }
        return result
    }

    /// The problems with `body` as the answer of `method template` with `status`; empty when it conforms.
    func problems(method: String, template: String, status: Int, contentType: String?, body: [UInt8]) -> [String] {
        guard let operation = ((root["paths"] as? [String: Any])?[template] as? [String: Any])?[method.lowercased()] as? [String: Any] else {
            return ["\(method) \(template) is not documented"]
        }
        guard let documented = (operation["responses"] as? [String: Any])?["\(status)"] else {
            return ["\(method) \(template) answered \(status), which is not documented"]
        }
        let response = resolve(documented)
        guard let content = response["content"] as? [String: Any] else { return [] }
        if content["text/plain"] != nil {
            return contentType?.hasPrefix("text/plain") == true ? [] : ["expected text/plain, got \(contentType ?? "none")"]
        }
        guard contentType == "application/json" else { return ["expected application/json, got \(contentType ?? "none")"] }
        guard let schema = (content["application/json"] as? [String: Any])?["schema"] as? [String: Any] else { return [] }
        let value: JSONValue
        do {
            value = try JSONValue.parse(body)
        } catch {
            return ["body is not JSON: \(error)"]
        }
        var problems: [String] = []
        validate(value, schema, at: "$", &problems)
        return problems
    }

    private func resolve(_ node: Any) -> [String: Any] {
        guard var object = node as? [String: Any] else { return [:] }
        while let reference = object["$ref"] as? String {
            var target: Any? = root
            for part in reference.dropFirst(2).split(separator: "/") { target = (target as? [String: Any])?[String(part)] }
            object = target as? [String: Any] ?? [:]
        }
        return object
    }

    private func validate(_ value: JSONValue, _ rawSchema: [String: Any], at path: String, _ problems: inout [String]) {
        let schema = resolve(rawSchema)
        if let parts = schema["allOf"] as? [Any] {
            for part in parts { validate(value, resolve(part), at: path, &problems) }
        }
        if value == .null {
            let enumAllowsNull = (schema["enum"] as? [Any])?.contains { $0 is NSNull } ?? false
            if schema["nullable"] as? Bool != true && !enumAllowsNull && schema["type"] != nil {
                problems.append("\(path): null where \(schema["type"]!) is required")
            }
            return
        }
        if let type = schema["type"] as? String, !Self.matches(value, type: type) {
            problems.append("\(path): \(value.typeName) where \(type) is required")
            return
        }
        if let allowed = schema["enum"] as? [Any] {
            let names = allowed.compactMap { $0 as? String }
            if case .string(let text) = value, !names.contains(text) { problems.append("\(path): \"\(text)\" is not one of \(names)") }
        }
        switch value {
        case .string(let text):
            if let pattern = schema["pattern"] as? String, text.range(of: pattern, options: .regularExpression) == nil {
                problems.append("\(path): \"\(text)\" does not match \(pattern)")
            }
            if schema["format"] as? String == "date-time",
                (try? Date(text, strategy: Date.ISO8601FormatStyle(includingFractionalSeconds: true))) == nil
            {
                problems.append("\(path): \"\(text)\" is not an ISO-8601 date-time with milliseconds")
            }
        case .int(let number):
            if let minimum = schema["minimum"] as? Int, number < minimum { problems.append("\(path): \(number) < \(minimum)") }
            if let maximum = schema["maximum"] as? Int, number > maximum { problems.append("\(path): \(number) > \(maximum)") }
        case .array(let items):
            if let itemSchema = schema["items"] as? [String: Any] {
                for (index, item) in items.enumerated() { validate(item, itemSchema, at: "\(path)[\(index)]", &problems) }
            }
        case .object(let members):
            let properties = schema["properties"] as? [String: Any] ?? [:]
            for required in schema["required"] as? [String] ?? [] where !members.contains(where: { $0.0 == required }) {
                problems.append("\(path): missing required \(required)")
            }
            for (key, member) in members {
                if let propertySchema = properties[key] as? [String: Any] {
                    validate(member, propertySchema, at: "\(path).\(key)", &problems)
                } else if schema["additionalProperties"] as? Bool == false {
                    problems.append("\(path): undocumented field \(key)")
                }
            }
        default:
            break
        }
    }

    private static func matches(_ value: JSONValue, type: String) -> Bool {
        switch (type, value) {
        case ("object", .object), ("array", .array), ("string", .string), ("boolean", .bool), ("integer", .int): true
        case ("number", .int), ("number", .double): true
        default: false
        }
    }
}
