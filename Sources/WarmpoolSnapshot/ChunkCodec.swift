import CZstd
import Foundation

/// A zstd compression context and its output buffer, reused chunk after chunk. The stateless
/// `ZSTD_compress` allocates and clears a context (over a megabyte at level 3) for every call, and a
/// fresh output array is zero-filled and faulted in page by page: per 1 MiB chunk that was a
/// fifth of the compression's own time. Not thread-safe: one chunk at a time (see `CodecPool`).
final class ZstdCompressor {
    private let context: OpaquePointer
    private var output: UnsafeMutableRawBufferPointer
    let level: Int32

    init(level: Int32) {
        guard let context = ZSTD_createCCtx() else { fatalError("ZSTD_createCCtx: out of memory") }
        self.context = context
        self.level = level
        output = UnsafeMutableRawBufferPointer.allocate(byteCount: 0, alignment: 16)
    }

    deinit {
        ZSTD_freeCCtx(context)
        output.deallocate()
    }

    /// One zstd frame holding `input`, with its size in the header (a reader refuses frames that
    /// do not state it). The bytes are valid until the next call.
    func compress(_ input: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
        let bound = ZSTD_compressBound(input.count)
        if output.count < bound {
            output.deallocate()
            output = UnsafeMutableRawBufferPointer.allocate(byteCount: bound, alignment: 16)
        }
        let written = ZSTD_compressCCtx(context, output.baseAddress, output.count, input.baseAddress, input.count, level)
        // Into a compressBound-sized buffer it cannot fail short of memory corruption.
        precondition(ZSTD_isError(written) == 0, "ZSTD_compressCCtx: \(String(cString: ZSTD_getErrorName(written)))")
        return UnsafeRawBufferPointer(rebasing: output[0..<written])
    }
}

/// A zstd decompression context, reused. Not thread-safe.
final class ZstdDecompressor {
    private let context: OpaquePointer

    init() {
        guard let context = ZSTD_createDCtx() else { fatalError("ZSTD_createDCtx: out of memory") }
        self.context = context
    }

    deinit { ZSTD_freeDCtx(context) }

    enum Failure: Error, CustomStringConvertible {
        case noStatedSize, tooLarge(UInt64), corrupt(String)

        var description: String {
            switch self {
            case .noStatedSize: "the frame does not state its size"
            case .tooLarge(let size): "the frame declares \(size) bytes, over the limit"
            case .corrupt(let reason): reason
            }
        }
    }

    /// One frame's content, refused before any allocation when it declares more than `maximumSize`.
    func decompress(_ input: UnsafeRawBufferPointer, maximumSize: Int) throws(Failure) -> [UInt8] {
        let declared = ZSTD_getFrameContentSize(input.baseAddress, input.count)
        // ZSTD_CONTENTSIZE_UNKNOWN is UInt64.max and ZSTD_CONTENTSIZE_ERROR the value below it.
        guard declared < UInt64.max - 1 else {
            throw declared == UInt64.max ? .noStatedSize : .corrupt("not a zstd frame")
        }
        guard declared <= UInt64(maximumSize) else { throw .tooLarge(declared) }
        var failure: String?
        let output = [UInt8](unsafeUninitializedCapacity: Int(declared)) { buffer, count in
            let written = ZSTD_decompressDCtx(context, buffer.baseAddress, buffer.count, input.baseAddress, input.count)
            if ZSTD_isError(written) != 0 {
                failure = String(cString: ZSTD_getErrorName(written))
                count = 0
            } else if written != Int(declared) {
                failure = "the frame's content differs from its declared size"
                count = 0
            } else {
                count = written
            }
        }
        if let failure { throw .corrupt(failure) }
        return output
    }
}

/// The codec state one sealing or opening uses: checked out for one chunk, then returned.
final class ChunkCodec {
    let compressor: ZstdCompressor
    let decompressor = ZstdDecompressor()

    init(level: Int32) { compressor = ZstdCompressor(level: level) }
}

/// Idle codecs, so that each thread sealing a chunk reuses one instead of making its own: as many
/// exist as chunks were ever sealed at once (the cooperative pool's threads), never one per chunk.
/// The codecs are not Sendable: the lock hands each to one thread at a time.
final class CodecPool: @unchecked Sendable {
    private let lock = NSLock()
    private var idle: [ChunkCodec] = []
    let level: Int32

    init(level: Int32) { self.level = level }

    func with<T>(_ body: (ChunkCodec) throws -> T) rethrows -> T {
        let codec = lock.withLock { idle.popLast() } ?? ChunkCodec(level: level)
        defer { lock.withLock { idle.append(codec) } }
        return try body(codec)
    }
}
