import Foundation
import Testing
@testable import WarmpoolSnapshot

#if canImport(Glibc)
import Glibc
#endif

/// The reader's window (refilled only when no cut is found in it) finds exactly the chunks the
/// chunker finds in the whole file: the boundaries are the snapshot format, and a smaller window
/// must not move them.
@Suite struct ChunkReaderTests {
    let chunker = ContentDefinedChunker(minimum: 16 << 10, average: 64 << 10, maximum: 256 << 10)

    func chunks(of data: [UInt8], readSize: Int) throws -> [[UInt8]] {
        let path = NSTemporaryDirectory() + "warmpool-reader-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Data(data).write(to: URL(fileURLWithPath: path))
        defer { unlink(path) }
        let fd = open(path, O_RDONLY)
        defer { close(fd) }
        let reader = ChunkReader(chunker: chunker, readSize: readSize)
        reader.reset(fd)
        var found: [[UInt8]] = []
        while let chunk = try reader.next() { found.append(chunk) }
        return found
    }

    @Test(arguments: [1, 4_096, 100_000, 1 << 20])
    func theWindowFindsTheChunkersBoundaries(readSize: Int) throws {
        let zeros = [UInt8](repeating: 0, count: 700_000)  // no cut in it: cut at the maximum
        let inputs: [[UInt8]] = [
            [], randomBytes(10, seed: 1), randomBytes(16 << 10, seed: 2), randomBytes(3 << 20, seed: 3),
            randomBytes(300_000, seed: 4) + zeros + randomBytes(500_000, seed: 5),
        ]
        for data in inputs {
            let expected = chunker.chunks(of: data).map { Array($0) }
            #expect(try chunks(of: data, readSize: readSize) == expected, "\(data.count) bytes, reads of \(readSize)")
        }
    }

    /// One reader, file after file: nothing of one file leaks into the next.
    @Test func aReaderIsReusedAcrossFiles() throws {
        let reader = ChunkReader(chunker: chunker)
        for seed in 0..<3 {
            let data = randomBytes(400_000 + seed * 50_000, seed: UInt64(10 + seed))
            let path = NSTemporaryDirectory() + "warmpool-reader-\(getpid())-\(seed)"
            try Data(data).write(to: URL(fileURLWithPath: path))
            defer { unlink(path) }
            let fd = open(path, O_RDONLY)
            defer { close(fd) }
            reader.reset(fd)
            var found: [UInt8] = []
            while let chunk = try reader.next() { found += chunk }
            #expect(found == data)
        }
    }
}
