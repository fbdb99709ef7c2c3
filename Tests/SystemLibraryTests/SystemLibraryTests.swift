import CCurl
import CCurlShim
import CLibSSH2
import CZstd
import Testing

/// The system-library targets must link against the Debian libraries Scripts/setup installs,
/// and the curl shim must pass its typed arguments through to curl unchanged.
@Suite struct SystemLibraryTests {
    @Test func zstdIsLinkedAndRoundTrips() throws {
        #expect(ZSTD_versionNumber() >= 10400)
        let input = Array(repeating: UInt8(ascii: "w"), count: 4096)
        var compressed = [UInt8](repeating: 0, count: ZSTD_compressBound(input.count))
        let written = ZSTD_compress(&compressed, compressed.count, input, input.count, 3)
        #expect(ZSTD_isError(written) == 0)
        #expect(written < input.count / 10)
    }

    @Test func libssh2IsLinkedAndInitialises() {
        #expect(libssh2_init(0) == 0)
        let version = String(cString: libssh2_version(0))
        #expect(version.hasPrefix("1."))
        libssh2_exit()
    }

    @Test func curlShimSetsAndReadsOptions() throws {
        let handle = try #require(curl_easy_init())
        defer { curl_easy_cleanup(handle) }
        #expect(warmpool_curl_setopt_long(handle, CURLOPT_TIMEOUT_MS, 1500) == CURLE_OK)
        #expect(warmpool_curl_setopt_string(handle, CURLOPT_URL, "http://127.0.0.1:1/") == CURLE_OK)
        #expect(warmpool_curl_setopt_long(handle, CURLOPT_CONNECTTIMEOUT_MS, 500) == CURLE_OK)
        // Port 1 on loopback refuses: the request must fail fast with a connect error, not hang.
        #expect(curl_easy_perform(handle) == CURLE_COULDNT_CONNECT)
        var code: Int = -1
        #expect(warmpool_curl_getinfo_long(handle, CURLINFO_RESPONSE_CODE, &code) == CURLE_OK)
        #expect(code == 0)
    }
}
