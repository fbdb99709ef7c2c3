import Foundation
import Testing

/// Every `curl` and `warmpoolctl` line of the README's API example, run in order against a live
/// controller and emulator: a README command that stops working fails this test.
@Suite(.serialized) struct ReadmeCommandsTests {
    static func readmeCommands() throws -> [String] {
        var directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        while !FileManager.default.fileExists(atPath: directory.appendingPathComponent("README.md").path) {
            guard directory.pathComponents.count > 1 else { throw HarnessError("README.md not found") }
            directory.deleteLastPathComponent()
        }
        let readme = try String(contentsOf: directory.appendingPathComponent("README.md"), encoding: .utf8)
        guard let start = readme.range(of: "```sh\nexport WARMPOOL_URL=http://127.0.0.1:8080") else {
            throw HarnessError("the README's API example block is gone")
        }
        let block = readme[start.upperBound...].prefix { _ in true }
        let end = block.range(of: "```")!.lowerBound
        return block[..<end].split(separator: "\n").map(String.init)
            .filter { $0.hasPrefix("curl ") || $0.hasPrefix("warmpoolctl ") }
    }

    @Test func everyAPICommandInTheReadmeWorks() throws {
        let commands = try Self.readmeCommands()
        #expect(commands.count >= 10, "\(commands)")
        let lab = try WarmPoolLab(bootDelayMilliseconds: 100)
        try lab.startController()
        let environment = [
            "WARMPOOL_URL=http://\(lab.harness.apiAddress)", "WARMPOOL_API_KEY=\(try lab.adminKey())",
            "PATH=\(lab.harness.binaries):/usr/bin:/bin",
        ]
        for command in commands {
            let (status, output) = try Command.run("/usr/bin/env", environment + ["/bin/bash", "-c", command])
            #expect(status == 0, "`\(command)` exited \(status): \(output)")
            if command.hasPrefix("curl ") {
                #expect(output.hasPrefix("{") && !output.contains("\"error\""), "`\(command)`: \(output)")
            }
        }
        #expect(try http("GET", "\(lab.api)/status/12", key: try lab.adminKey()).status == 404, "the last command cleans up")
    }
}
