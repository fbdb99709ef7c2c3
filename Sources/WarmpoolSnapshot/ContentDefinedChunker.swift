/// Content-defined chunking (FastCDC: Xia et al., USENIX ATC 2016, with normalized chunking):
/// a boundary falls where a rolling gear hash of the last 64 bytes matches a mask, so an insert
/// or a deletion moves the boundaries near it only, and every later chunk is found again
/// unchanged (and is not uploaded again).
///
/// Pure: it looks at bytes and answers where the first chunk ends. The gear table and the masks
/// are part of the snapshot format: another table finds other boundaries (correct, but nothing
/// deduplicates against snapshots made with the old one).
public struct ContentDefinedChunker: Sendable {
    public let minimum: Int
    public let average: Int
    public let maximum: Int
    /// More bits than `average` asks for before it (fewer cuts: chunks under the average are
    /// rare), fewer after (more cuts: chunks over it are rare): sizes cluster at the average.
    private let maskSmall: UInt64
    private let maskLarge: UInt64

    /// 512 KiB / 1 MiB / 4 MiB by default: restic's range, large enough that a 2 GiB volume is
    /// about two thousand objects, small enough that an edit re-uploads about a megabyte.
    public init(minimum: Int = 512 << 10, average: Int = 1 << 20, maximum: Int = 4 << 20) {
        precondition(minimum >= 64 && minimum < average && average < maximum && average.nonzeroBitCount == 1,
                     "chunk sizes: 64 <= minimum < average (a power of two) < maximum")
        self.minimum = minimum
        self.average = average
        self.maximum = maximum
        let bits = average.trailingZeroBitCount
        // The top bits: with `hash << 1 + gear[byte]`, bit k depends on the last k + 1 bytes, so
        // the high ones see the whole 64-byte window.
        maskSmall = ~UInt64(0) << UInt64(64 - (bits + 2))
        maskLarge = ~UInt64(0) << UInt64(64 - (bits - 2))
    }

    /// The length of the chunk that starts `bytes`: a content-defined boundary, or `maximum`, or
    /// all of `bytes` when fewer than a chunk's worth remain (the caller passes at least
    /// `maximum` bytes unless the data ends).
    public func boundary(in bytes: UnsafeRawBufferPointer) -> Int {
        var length = bytes.count
        if length <= minimum { return length }
        if length > maximum { length = maximum }
        let normal = min(average, length)
        var hash: UInt64 = 0
        var index = minimum
        return Self.gear.withUnsafeBufferPointer { gear in
            while index < normal {
                hash = (hash << 1) &+ gear[Int(bytes[index])]
                index += 1
                if hash & maskSmall == 0 { return index }
            }
            while index < length {
                hash = (hash << 1) &+ gear[Int(bytes[index])]
                index += 1
                if hash & maskLarge == 0 { return index }
            }
            return length
        }
    }

    /// The chunks of `data`, in order (for tests and small inputs; snapshots stream).
    public func chunks(of data: [UInt8]) -> [ArraySlice<UInt8>] {
        var chunks: [ArraySlice<UInt8>] = []
        var start = 0
        data.withUnsafeBytes { all in
            while start < all.count {
                let length = boundary(in: UnsafeRawBufferPointer(rebasing: all[start..<min(all.count, start + maximum)]))
                chunks.append(data[start..<(start + length)])
                start += length
            }
        }
        return chunks
    }

    /// 256 pseudo-random words from SplitMix64 with a fixed seed: the format's gear table.
    static let gear: [UInt64] = {
        var state: UInt64 = 0x5741_524D_504F_4F4C  // "WARMPOOL"
        return (0..<256).map { _ in
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }()
}
