import CCurl
import CCurlShim
import Foundation

/// Owns one CURL easy handle. Not thread-safe: one transfer at a time, on a thread-pool thread
/// (`curl_easy_perform` blocks). Reusing the handle keeps its connection alive between calls.
final class CurlEasy {
    private let handle: UnsafeMutableRawPointer

    /// curl_global_init is not thread-safe: run it once, before the first handle.
    private static let globalInit: Void = { _ = curl_global_init(Int(CURL_GLOBAL_DEFAULT)) }()

    init() throws(HTTPTransportError) {
        _ = Self.globalInit
        guard let handle = curl_easy_init() else { throw HTTPTransportError(curlCode: -1, message: "curl_easy_init failed") }
        self.handle = handle
    }

    deinit { curl_easy_cleanup(handle) }

    /// Runs one transfer to completion. `body` is sent for every method but GET (the reference's
    /// DELETE carries `{}` too).
    func perform(method: String, url: String, headers: [String], body: Data?, timeoutMilliseconds: Int,
                 connectTimeoutMilliseconds: Int) throws(HTTPTransportError) -> HTTPResponse
    {
        // Reset clears the previous transfer's options but keeps the connection cache.
        curl_easy_reset(handle)
        let sink = ResponseSink()
        var errorBuffer = [CChar](repeating: 0, count: Int(CURL_ERROR_SIZE) + 1)
        var headerList: UnsafeMutablePointer<curl_slist>?
        // "Expect:" stops curl from waiting for a 100-continue on larger bodies.
        for header in headers + ["Expect:"] { headerList = curl_slist_append(headerList, header) }
        defer { curl_slist_free_all(headerList) }

        let code: CURLcode = errorBuffer.withUnsafeMutableBufferPointer { errorPointer in
            withExtendedLifetime(sink) {
                let sinkPointer = Unmanaged.passUnretained(sink).toOpaque()
                var status = CURLE_OK
                func set(_ result: CURLcode) { if status == CURLE_OK { status = result } }
                set(warmpool_curl_setopt_pointer(handle, CURLOPT_ERRORBUFFER, errorPointer.baseAddress))
                set(warmpool_curl_setopt_string(handle, CURLOPT_URL, url))
                // Signals and threads do not mix: without this, a DNS timeout raises SIGALRM.
                set(warmpool_curl_setopt_long(handle, CURLOPT_NOSIGNAL, 1))
                set(warmpool_curl_setopt_long(handle, CURLOPT_TIMEOUT_MS, timeoutMilliseconds))
                set(warmpool_curl_setopt_long(handle, CURLOPT_CONNECTTIMEOUT_MS, connectTimeoutMilliseconds))
                set(warmpool_curl_setopt_long(handle, CURLOPT_TCP_NODELAY, 1))
                set(warmpool_curl_setopt_pointer(handle, CURLOPT_HTTPHEADER, headerList))
                set(warmpool_curl_setopt_write_function(handle, curlWriteBody))
                set(warmpool_curl_setopt_pointer(handle, CURLOPT_WRITEDATA, sinkPointer))
                set(warmpool_curl_setopt_header_function(handle, curlWriteHeader))
                set(warmpool_curl_setopt_pointer(handle, CURLOPT_HEADERDATA, sinkPointer))
                if method == "GET" {
                    set(warmpool_curl_setopt_long(handle, CURLOPT_HTTPGET, 1))
                } else {
                    set(warmpool_curl_setopt_string(handle, CURLOPT_CUSTOMREQUEST, method))
                    // A trailing NUL keeps the pointer valid for an empty body; the size excludes it.
                    var payload = [UInt8](body ?? Data())
                    set(warmpool_curl_setopt_long(handle, CURLOPT_POSTFIELDSIZE, payload.count))
                    payload.append(0)
                    // COPYPOSTFIELDS copies the bytes, so they need not outlive this call.
                    payload.withUnsafeMutableBytes { bytes in
                        set(warmpool_curl_setopt_pointer(handle, CURLOPT_COPYPOSTFIELDS, bytes.baseAddress))
                    }
                }
                guard status == CURLE_OK else { return status }
                return curl_easy_perform(handle)
            }
        }
        guard code == CURLE_OK else {
            let detail = String(decoding: errorBuffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            throw HTTPTransportError(curlCode: Int(code.rawValue), message: detail.isEmpty ? String(cString: curl_easy_strerror(code)) : detail)
        }
        var status = 0
        _ = warmpool_curl_getinfo_long(handle, CURLINFO_RESPONSE_CODE, &status)
        return HTTPResponse(status: status, headers: sink.headers, body: sink.body)
    }
}

/// Where the callbacks put what arrives; one per transfer.
private final class ResponseSink {
    var body = Data()
    var headers: [String: String] = [:]

    func headerLine(_ line: String) {
        let trimmed = line.trimmingCharacters(in: .whitespacesAndNewlines)
        // A new status line (after a 100 Continue or a redirect) starts a new header block.
        if trimmed.hasPrefix("HTTP/") {
            headers = [:]
            return
        }
        guard let colon = trimmed.firstIndex(of: ":") else { return }
        let name = trimmed[..<colon].lowercased()
        headers[name] = trimmed[trimmed.index(after: colon)...].trimmingCharacters(in: .whitespaces)
    }
}

private let curlWriteBody: @convention(c) (UnsafeMutablePointer<CChar>?, Int, Int, UnsafeMutableRawPointer?) -> Int = {
    data, size, count, context in
    guard let data, let context else { return 0 }
    let sink = Unmanaged<ResponseSink>.fromOpaque(context).takeUnretainedValue()
    sink.body.append(UnsafeRawPointer(data).assumingMemoryBound(to: UInt8.self), count: size * count)
    return size * count
}

private let curlWriteHeader: @convention(c) (UnsafeMutablePointer<CChar>?, Int, Int, UnsafeMutableRawPointer?) -> Int = {
    data, size, count, context in
    guard let data, let context else { return 0 }
    let sink = Unmanaged<ResponseSink>.fromOpaque(context).takeUnretainedValue()
    let bytes = UnsafeRawBufferPointer(start: data, count: size * count)
    sink.headerLine(String(decoding: bytes, as: UTF8.self))
    return size * count
}
