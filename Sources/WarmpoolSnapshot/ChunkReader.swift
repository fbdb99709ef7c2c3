import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Reads one file at a time and cuts it into content-defined chunks, through one window buffer
/// reused for every file of a snapshot: the bytes are read once into it and copied once out of
/// it, into the chunk handed on. Not thread-safe: the snapshot's one reading task owns it.
///
/// The window is the largest chunk plus one read (5 MiB by default), not twice the largest chunk:
/// it is resident for the whole snapshot, and the snapshot process has 64 MiB in all. A cut is
/// looked for in what the window holds; only when none is found there (and the file goes on)
/// are the leftover bytes moved to the front, the window refilled and the search made again, about
/// once per read, over the leftover bytes only (their first `minimum` are skipped, as always).
final class ChunkReader {
    let chunker: ContentDefinedChunker
    private let window: UnsafeMutableRawBufferPointer
    private var fd: Int32 = -1
    private var start = 0
    private var end = 0
    private var ended = true

    init(chunker: ContentDefinedChunker, readSize: Int = 1 << 20) {
        self.chunker = chunker
        window = UnsafeMutableRawBufferPointer.allocate(byteCount: chunker.maximum + readSize, alignment: 64)
    }

    deinit { window.deallocate() }

    /// Starts on a file (the caller opens and closes it).
    func reset(_ fd: Int32) {
        self.fd = fd
        start = 0
        end = 0
        ended = false
    }

    /// The next chunk of the file, nil at its end. Throws the read's errno.
    func next() throws(ReadFailure) -> [UInt8]? {
        var length = cut()
        // No cut in what the window holds, short of the largest chunk: read on and look again.
        if length == end - start, length < chunker.maximum, !ended {
            try refill()
            length = cut()
        }
        guard length > 0 else { return nil }
        let chunk = [UInt8](unsafeUninitializedCapacity: length) { buffer, count in
            memcpy(buffer.baseAddress!, window.baseAddress! + start, length)
            count = length
        }
        start += length
        return chunk
    }

    private func cut() -> Int {
        guard end > start else { return 0 }
        return chunker.boundary(in: UnsafeRawBufferPointer(rebasing: window[start..<min(end, start + chunker.maximum)]))
    }

    /// Moves the leftover bytes to the front and fills the rest of the window (or reads to the end).
    private func refill() throws(ReadFailure) {
        if start > 0 {
            if end > start { memmove(window.baseAddress!, window.baseAddress! + start, end - start) }
            end -= start
            start = 0
        }
        while !ended && end < window.count {
            let count = read(fd, window.baseAddress! + end, window.count - end)
            if count < 0 {
                if errno == EINTR { continue }
                throw ReadFailure(errno: errno)
            }
            if count == 0 { ended = true } else { end += count }
        }
    }

    struct ReadFailure: Error {
        var errno: Int32
    }
}
