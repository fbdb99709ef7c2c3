import CZstd

/// zstd for telemetry documents. Stateless calls: a document is small and sent rarely.
public enum Zstd {
    /// A decompressed telemetry document larger than this is refused: a frame of at most 64 KiB
    /// must not be able to claim gigabytes (a decompression bomb).
    public static let maximumDecompressedSize = 1 << 20

    public static func compress(_ input: [UInt8], level: Int32 = 3) -> [UInt8] {
        var output = [UInt8](repeating: 0, count: ZSTD_compressBound(input.count))
        let written = output.withUnsafeMutableBytes { out in
            input.withUnsafeBytes { ZSTD_compress(out.baseAddress, out.count, $0.baseAddress, $0.count, level) }
        }
        // Compression into a compressBound-sized buffer cannot fail short of memory corruption.
        precondition(ZSTD_isError(written) == 0, "ZSTD_compress: \(String(cString: ZSTD_getErrorName(written)))")
        output.removeSubrange(written...)
        return output
    }

    /// Decompresses one zstd frame whose header states its size, refusing anything over `maximumSize`.
    public static func decompress(_ input: [UInt8], maximumSize: Int = maximumDecompressedSize) throws(ProtocolViolation) -> [UInt8] {
        let declared = input.withUnsafeBytes { ZSTD_getFrameContentSize($0.baseAddress, $0.count) }
        // ZSTD_CONTENTSIZE_UNKNOWN is UInt64.max and ZSTD_CONTENTSIZE_ERROR the value below it.
        guard declared < UInt64.max - 1 else {
            throw .decompressionFailed(declared == UInt64.max ? "frame does not state its size" : "not a zstd frame")
        }
        guard declared <= UInt64(maximumSize) else {
            throw .decompressionFailed("declares \(declared) bytes, over the \(maximumSize)-byte limit")
        }
        var output = [UInt8](repeating: 0, count: Int(declared))
        let written = output.withUnsafeMutableBytes { out in
            input.withUnsafeBytes { ZSTD_decompress(out.baseAddress, out.count, $0.baseAddress, $0.count) }
        }
        guard ZSTD_isError(written) == 0 else {
            throw .decompressionFailed(String(cString: ZSTD_getErrorName(written)))
        }
        guard written == Int(declared) else { throw .decompressionFailed("size differs from the declared size") }
        return output
    }
}
