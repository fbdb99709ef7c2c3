import Crypto
import Foundation
import Testing
import WarmpoolWire
@testable import WarmpoolSnapshot

/// Deterministic pseudo-random bytes (xorshift64*), fast enough for megabytes in a debug build.
func randomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
    var state = seed | 1
    var out = [UInt8](repeating: 0, count: count)
    out.withUnsafeMutableBytes { raw in
        var index = 0
        while index < count {
            state ^= state >> 12
            state ^= state << 25
            state ^= state >> 27
            var word = state &* 0x2545_F491_4F6C_DD1D
            for _ in 0..<8 where index < count {
                raw[index] = UInt8(truncatingIfNeeded: word)
                word >>= 8
                index += 1
            }
        }
    }
    return out
}

@Suite struct ChunkingTests {
    let small = ContentDefinedChunker(minimum: 16 << 10, average: 64 << 10, maximum: 256 << 10)

    func digests(_ chunks: [ArraySlice<UInt8>]) -> [SHA256.Digest] { chunks.map { SHA256.hash(data: $0) } }

    @Test func chunksCoverTheDataWithinTheirBoundsAndClusterAtTheAverage() {
        let data = randomBytes(8 << 20, seed: 7)
        let chunks = small.chunks(of: data)
        #expect(chunks.flatMap { $0 } == data, "the chunks are the data, in order")
        for chunk in chunks.dropLast() { #expect((small.minimum...small.maximum).contains(chunk.count)) }
        let mean = data.count / chunks.count
        #expect(mean > small.average / 2 && mean < small.average * 2, "mean chunk \(mean) bytes")
        #expect(chunks.count { $0.count == small.maximum } < chunks.count / 10, "cut by content, not by the maximum")
        #expect(digests(small.chunks(of: data)) == digests(chunks), "the same bytes, the same boundaries")
    }

    /// The point of content-defined chunking: an insert or a deletion changes the chunks near it
    /// only; fixed-size blocks would change every block after it.
    @Test func anInsertOrADeletionChangesOnlyTheChunksAroundIt() {
        let data = randomBytes(8 << 20, seed: 11)
        let before = Set(digests(small.chunks(of: data)).map { Data($0) })
        var inserted = data
        inserted.insert(contentsOf: randomBytes(100, seed: 3), at: 3 << 20)
        var deleted = data
        deleted.removeSubrange((5 << 20)..<((5 << 20) + 4_000))
        for edited in [inserted, deleted] {
            let after = digests(small.chunks(of: edited)).map { Data($0) }
            let new = after.filter { !before.contains($0) }
            #expect(new.count <= 3, "\(new.count) of \(after.count) chunks changed")
        }
    }

    @Test func shortAndUniformInputs() {
        #expect(small.chunks(of: []).isEmpty)
        #expect(small.chunks(of: randomBytes(1000, seed: 1)).map(\.count) == [1000], "under the minimum: one chunk")
        // Zeros never match the mask (the hash settles on one value): cut at the maximum.
        let zeros = [UInt8](repeating: 0, count: 1 << 20)
        #expect(small.chunks(of: zeros).map(\.count) == [256 << 10, 256 << 10, 256 << 10, 256 << 10])
    }

    @Test func theDefaultSizesAreRestics() {
        let chunker = ContentDefinedChunker()
        #expect(chunker.minimum == 512 << 10 && chunker.average == 1 << 20 && chunker.maximum == 4 << 20)
        let data = randomBytes(12 << 20, seed: 5)
        let chunks = chunker.chunks(of: data)
        #expect(chunks.flatMap { $0 } == data)
        for chunk in chunks.dropLast() { #expect((chunker.minimum...chunker.maximum).contains(chunk.count)) }
        // The gear table is part of the format: its first word never changes.
        #expect(ContentDefinedChunker.gear.count == 256 && Set(ContentDefinedChunker.gear).count == 256)
    }
}

@Suite struct ChunkSealerTests {
    let key = Array(randomBytes(32, seed: 99))
    var sealer: ChunkSealer { ChunkSealer(snapshotKey: key) }

    @Test func sealsAndOpensAndNamesByAKeyedHash() throws {
        let plaintext = Array(repeating: Array("checkpoint step 1200\n".utf8), count: 5_000).flatMap { $0 } + randomBytes(50_000, seed: 2)
        let (id, object) = try sealer.seal(plaintext)
        #expect(id.count == 64 && id == sealer.id(of: plaintext))
        #expect(object.count < plaintext.count / 2, "compressed before it is sealed: \(object.count) of \(plaintext.count)")
        #expect(try sealer.open(object, id: id, maximumSize: 4 << 20) == plaintext)
        let again = try sealer.seal(plaintext)
        #expect(again.id == id && again.object != object, "the same name, a fresh nonce")
        #expect(ChunkSealer(snapshotKey: randomBytes(32, seed: 100)).id(of: plaintext) != id, "the name depends on the key")
        #expect(id != Array(SHA256.hash(data: plaintext)).hexString, "not a bare hash a store could look up")
    }

    @Test func everyChangeIsRefused() throws {
        let plaintext = randomBytes(100_000, seed: 4)
        let (id, object) = try sealer.seal(plaintext)
        for index in [0, 11, 12, object.count / 2, object.count - 1] {
            var tampered = object
            tampered[index] ^= 0x01
            #expect(throws: ChunkError.notAuthentic(id: id)) { try sealer.open(tampered, id: id, maximumSize: 4 << 20) }
        }
        #expect(throws: ChunkError.notAuthentic(id: id)) { try sealer.open(Array(object.prefix(20)), id: id, maximumSize: 4 << 20) }
        let other = try sealer.seal(randomBytes(1_000, seed: 5))
        #expect(throws: ChunkError.notAuthentic(id: other.id)) { try sealer.open(object, id: other.id, maximumSize: 4 << 20) }
        #expect(throws: ChunkError.notAuthentic(id: id)) {
            try ChunkSealer(snapshotKey: randomBytes(32, seed: 6)).open(object, id: id, maximumSize: 4 << 20)
        }
        // A chunk larger than the reader accepts is refused before it is inflated.
        #expect(throws: ChunkError.self) { try sealer.open(object, id: id, maximumSize: 50_000) }
    }
}

@Suite struct SnapshotIDTests {
    /// Ids sort by time to the millisecond: "the newest" and `list` read their order from them
    /// (CI made two snapshots within one second, and the random suffix decided).
    @Test func idsSortInTheOrderTheyWereMade() {
        let start = Date(timeIntervalSince1970: 1_796_000_000.5)
        let ids = (0..<200).map { SnapshotRepository.snapshotID(start.addingTimeInterval(Double($0) * 0.002)) }
        #expect(ids.sorted() == ids)
        #expect(ids[0].hasPrefix("20261130T005320") && ids[0].contains(".500Z-"), "\(ids[0])")
    }
}
