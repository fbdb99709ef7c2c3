/// SHA-256 (FIPS 180-4) and HMAC-SHA256 (RFC 2104), in Swift.
///
/// The wire needs nothing else of a crypto library, and swift-crypto brought all of BoringSSL
/// (and FoundationEssentials' `Data`) into the agent for these two functions: megabytes of code
/// and relocations mapped into every GPU instance's agent. Written for the frame MAC's hot path:
/// the state is a value of fixed size, so a hasher that has absorbed a key pad is forked by
/// copying it; `update` never allocates; the compression function works on unsafe pointers.
/// Checked against swift-crypto and the FIPS 180-4 / RFC 4231 vectors in WarmpoolWireTests.
public struct SHA256Hasher: Sendable {
    public static let blockSize = 64
    public static let digestSize = 32

    /// H0...H7 (FIPS 180-4 §5.3.3 initial values).
    private var state = State()
    /// The partial block not yet compressed: `pendingCount` bytes of it are meaningful.
    private var pending: Block = (0, 0, 0, 0, 0, 0, 0, 0)
    private var pendingCount = 0
    /// Bytes absorbed in all, for the length in the final padding.
    private var totalCount: UInt64 = 0

    public init() {}

    public static func hash(_ bytes: UnsafeRawBufferPointer) -> Digest {
        var hasher = SHA256Hasher()
        hasher.update(bytes)
        return hasher.finalize()
    }

    public static func hash(_ bytes: [UInt8]) -> Digest {
        bytes.withUnsafeBytes { hash($0) }
    }

    public mutating func update(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { update($0) }
    }

    public mutating func update(_ bytes: ArraySlice<UInt8>) {
        bytes.withUnsafeBytes { update($0) }
    }

    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        guard var input = bytes.baseAddress, bytes.count > 0 else { return }
        var remaining = bytes.count
        totalCount &+= UInt64(remaining)
        if pendingCount > 0 {
            let taken = min(remaining, Self.blockSize - pendingCount)
            withUnsafeMutableBytes(of: &pending) { block in
                (block.baseAddress! + pendingCount).copyMemory(from: input, byteCount: taken)
            }
            pendingCount += taken
            input += taken
            remaining -= taken
            guard pendingCount == Self.blockSize else { return }
            withUnsafeBytes(of: pending) { Self.compress(&state, $0.baseAddress!) }
            pendingCount = 0
        }
        while remaining >= Self.blockSize {
            Self.compress(&state, input)
            input += Self.blockSize
            remaining -= Self.blockSize
        }
        if remaining > 0 {
            withUnsafeMutableBytes(of: &pending) { $0.baseAddress!.copyMemory(from: input, byteCount: remaining) }
            pendingCount = remaining
        }
    }

    /// Pads (0x80, zeros, the bit length big-endian in the last 8 bytes) and returns the digest.
    /// The hasher is spent: `consuming`, so a forked copy is what a caller finalizes.
    public consuming func finalize() -> Digest {
        let bitLength = totalCount &* 8
        let used = pendingCount
        var state = self.state
        var last = pending
        withUnsafeMutableBytes(of: &last) { block in
            block[used] = 0x80
            if used + 1 > Self.blockSize - 8 {
                // No room for the length: this block ends in zeros, the next holds the length.
                for index in (used + 1)..<Self.blockSize { block[index] = 0 }
                Self.compress(&state, UnsafeRawPointer(block.baseAddress!))
                for index in 0..<(Self.blockSize - 8) { block[index] = 0 }
            } else {
                for index in (used + 1)..<(Self.blockSize - 8) { block[index] = 0 }
            }
            block.storeBytes(of: bitLength.bigEndian, toByteOffset: Self.blockSize - 8, as: UInt64.self)
            Self.compress(&state, UnsafeRawPointer(block.baseAddress!))
        }
        return Digest(state)
    }

    /// A SHA-256 digest: 32 bytes, inline.
    public struct Digest: Sendable, Hashable {
        private var words: (UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32)

        fileprivate init(_ state: State) {
            words = (state.a.bigEndian, state.b.bigEndian, state.c.bigEndian, state.d.bigEndian,
                     state.e.bigEndian, state.f.bigEndian, state.g.bigEndian, state.h.bigEndian)
        }

        public func withUnsafeBytes<Result>(_ body: (UnsafeRawBufferPointer) throws -> Result) rethrows -> Result {
            try Swift.withUnsafeBytes(of: words, body)
        }

        public var bytes: [UInt8] { withUnsafeBytes { Array($0) } }

        public static func == (lhs: Digest, rhs: Digest) -> Bool { lhs.bytes == rhs.bytes }
        public func hash(into hasher: inout Hasher) { withUnsafeBytes { hasher.combine(bytes: $0) } }
    }

    fileprivate struct State {
        var a: UInt32 = 0x6a09_e667, b: UInt32 = 0xbb67_ae85, c: UInt32 = 0x3c6e_f372, d: UInt32 = 0xa54f_f53a
        var e: UInt32 = 0x510e_527f, f: UInt32 = 0x9b05_688c, g: UInt32 = 0x1f83_d9ab, h: UInt32 = 0x5be0_cd19
    }

    private typealias Block = (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64)

    /// FIPS 180-4 §6.2.2 on one 64-byte block, unrolled: the schedule is a rolling window of
    /// sixteen words (W[t] overwrites W[t-16] as it is made) and the round constants are
    /// literals, so the block's words, the working variables and the constants stay in registers
    /// and immediates. The looped form (a 64-word schedule on the stack, constants read from a
    /// global array) took a third longer per block here (150 ns against 111 ns). Generated; FIPS
    /// 180-4's order, round by round. Not inlined: one copy of its few kilobytes serves every
    /// caller (the agent's binary stays small), and a call is nothing beside 64 rounds.
    @inline(never)
    private static func compress(_ state: inout State, _ block: UnsafeRawPointer) {
        var w0 = UInt32(bigEndian: block.loadUnaligned(fromByteOffset: 0, as: UInt32.self))
        var w1 = UInt32(bigEndian: block.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
        var w2 = UInt32(bigEndian: block.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
        var w3 = UInt32(bigEndian: block.loadUnaligned(fromByteOffset: 12, as: UInt32.self))
        var w4 = UInt32(bigEndian: block.loadUnaligned(fromByteOffset: 16, as: UInt32.self))
        var w5 = UInt32(bigEndian: block.loadUnaligned(fromByteOffset: 20, as: UInt32.self))
        var w6 = UInt32(bigEndian: block.loadUnaligned(fromByteOffset: 24, as: UInt32.self))
        var w7 = UInt32(bigEndian: block.loadUnaligned(fromByteOffset: 28, as: UInt32.self))
        var w8 = UInt32(bigEndian: block.loadUnaligned(fromByteOffset: 32, as: UInt32.self))
        var w9 = UInt32(bigEndian: block.loadUnaligned(fromByteOffset: 36, as: UInt32.self))
        var w10 = UInt32(bigEndian: block.loadUnaligned(fromByteOffset: 40, as: UInt32.self))
        var w11 = UInt32(bigEndian: block.loadUnaligned(fromByteOffset: 44, as: UInt32.self))
        var w12 = UInt32(bigEndian: block.loadUnaligned(fromByteOffset: 48, as: UInt32.self))
        var w13 = UInt32(bigEndian: block.loadUnaligned(fromByteOffset: 52, as: UInt32.self))
        var w14 = UInt32(bigEndian: block.loadUnaligned(fromByteOffset: 56, as: UInt32.self))
        var w15 = UInt32(bigEndian: block.loadUnaligned(fromByteOffset: 60, as: UInt32.self))
        var a = state.a, b = state.b, c = state.c, d = state.d
        var e = state.e, f = state.f, g = state.g, h = state.h
        round(a, b, c, &d, e, f, g, &h, 0x428a_2f98 &+ w0)
        round(h, a, b, &c, d, e, f, &g, 0x7137_4491 &+ w1)
        round(g, h, a, &b, c, d, e, &f, 0xb5c0_fbcf &+ w2)
        round(f, g, h, &a, b, c, d, &e, 0xe9b5_dba5 &+ w3)
        round(e, f, g, &h, a, b, c, &d, 0x3956_c25b &+ w4)
        round(d, e, f, &g, h, a, b, &c, 0x59f1_11f1 &+ w5)
        round(c, d, e, &f, g, h, a, &b, 0x923f_82a4 &+ w6)
        round(b, c, d, &e, f, g, h, &a, 0xab1c_5ed5 &+ w7)
        round(a, b, c, &d, e, f, g, &h, 0xd807_aa98 &+ w8)
        round(h, a, b, &c, d, e, f, &g, 0x1283_5b01 &+ w9)
        round(g, h, a, &b, c, d, e, &f, 0x2431_85be &+ w10)
        round(f, g, h, &a, b, c, d, &e, 0x550c_7dc3 &+ w11)
        round(e, f, g, &h, a, b, c, &d, 0x72be_5d74 &+ w12)
        round(d, e, f, &g, h, a, b, &c, 0x80de_b1fe &+ w13)
        round(c, d, e, &f, g, h, a, &b, 0x9bdc_06a7 &+ w14)
        round(b, c, d, &e, f, g, h, &a, 0xc19b_f174 &+ w15)
        w0 = schedule(w14, w9, w1, w0)
        round(a, b, c, &d, e, f, g, &h, 0xe49b_69c1 &+ w0)
        w1 = schedule(w15, w10, w2, w1)
        round(h, a, b, &c, d, e, f, &g, 0xefbe_4786 &+ w1)
        w2 = schedule(w0, w11, w3, w2)
        round(g, h, a, &b, c, d, e, &f, 0x0fc1_9dc6 &+ w2)
        w3 = schedule(w1, w12, w4, w3)
        round(f, g, h, &a, b, c, d, &e, 0x240c_a1cc &+ w3)
        w4 = schedule(w2, w13, w5, w4)
        round(e, f, g, &h, a, b, c, &d, 0x2de9_2c6f &+ w4)
        w5 = schedule(w3, w14, w6, w5)
        round(d, e, f, &g, h, a, b, &c, 0x4a74_84aa &+ w5)
        w6 = schedule(w4, w15, w7, w6)
        round(c, d, e, &f, g, h, a, &b, 0x5cb0_a9dc &+ w6)
        w7 = schedule(w5, w0, w8, w7)
        round(b, c, d, &e, f, g, h, &a, 0x76f9_88da &+ w7)
        w8 = schedule(w6, w1, w9, w8)
        round(a, b, c, &d, e, f, g, &h, 0x983e_5152 &+ w8)
        w9 = schedule(w7, w2, w10, w9)
        round(h, a, b, &c, d, e, f, &g, 0xa831_c66d &+ w9)
        w10 = schedule(w8, w3, w11, w10)
        round(g, h, a, &b, c, d, e, &f, 0xb003_27c8 &+ w10)
        w11 = schedule(w9, w4, w12, w11)
        round(f, g, h, &a, b, c, d, &e, 0xbf59_7fc7 &+ w11)
        w12 = schedule(w10, w5, w13, w12)
        round(e, f, g, &h, a, b, c, &d, 0xc6e0_0bf3 &+ w12)
        w13 = schedule(w11, w6, w14, w13)
        round(d, e, f, &g, h, a, b, &c, 0xd5a7_9147 &+ w13)
        w14 = schedule(w12, w7, w15, w14)
        round(c, d, e, &f, g, h, a, &b, 0x06ca_6351 &+ w14)
        w15 = schedule(w13, w8, w0, w15)
        round(b, c, d, &e, f, g, h, &a, 0x1429_2967 &+ w15)
        w0 = schedule(w14, w9, w1, w0)
        round(a, b, c, &d, e, f, g, &h, 0x27b7_0a85 &+ w0)
        w1 = schedule(w15, w10, w2, w1)
        round(h, a, b, &c, d, e, f, &g, 0x2e1b_2138 &+ w1)
        w2 = schedule(w0, w11, w3, w2)
        round(g, h, a, &b, c, d, e, &f, 0x4d2c_6dfc &+ w2)
        w3 = schedule(w1, w12, w4, w3)
        round(f, g, h, &a, b, c, d, &e, 0x5338_0d13 &+ w3)
        w4 = schedule(w2, w13, w5, w4)
        round(e, f, g, &h, a, b, c, &d, 0x650a_7354 &+ w4)
        w5 = schedule(w3, w14, w6, w5)
        round(d, e, f, &g, h, a, b, &c, 0x766a_0abb &+ w5)
        w6 = schedule(w4, w15, w7, w6)
        round(c, d, e, &f, g, h, a, &b, 0x81c2_c92e &+ w6)
        w7 = schedule(w5, w0, w8, w7)
        round(b, c, d, &e, f, g, h, &a, 0x9272_2c85 &+ w7)
        w8 = schedule(w6, w1, w9, w8)
        round(a, b, c, &d, e, f, g, &h, 0xa2bf_e8a1 &+ w8)
        w9 = schedule(w7, w2, w10, w9)
        round(h, a, b, &c, d, e, f, &g, 0xa81a_664b &+ w9)
        w10 = schedule(w8, w3, w11, w10)
        round(g, h, a, &b, c, d, e, &f, 0xc24b_8b70 &+ w10)
        w11 = schedule(w9, w4, w12, w11)
        round(f, g, h, &a, b, c, d, &e, 0xc76c_51a3 &+ w11)
        w12 = schedule(w10, w5, w13, w12)
        round(e, f, g, &h, a, b, c, &d, 0xd192_e819 &+ w12)
        w13 = schedule(w11, w6, w14, w13)
        round(d, e, f, &g, h, a, b, &c, 0xd699_0624 &+ w13)
        w14 = schedule(w12, w7, w15, w14)
        round(c, d, e, &f, g, h, a, &b, 0xf40e_3585 &+ w14)
        w15 = schedule(w13, w8, w0, w15)
        round(b, c, d, &e, f, g, h, &a, 0x106a_a070 &+ w15)
        w0 = schedule(w14, w9, w1, w0)
        round(a, b, c, &d, e, f, g, &h, 0x19a4_c116 &+ w0)
        w1 = schedule(w15, w10, w2, w1)
        round(h, a, b, &c, d, e, f, &g, 0x1e37_6c08 &+ w1)
        w2 = schedule(w0, w11, w3, w2)
        round(g, h, a, &b, c, d, e, &f, 0x2748_774c &+ w2)
        w3 = schedule(w1, w12, w4, w3)
        round(f, g, h, &a, b, c, d, &e, 0x34b0_bcb5 &+ w3)
        w4 = schedule(w2, w13, w5, w4)
        round(e, f, g, &h, a, b, c, &d, 0x391c_0cb3 &+ w4)
        w5 = schedule(w3, w14, w6, w5)
        round(d, e, f, &g, h, a, b, &c, 0x4ed8_aa4a &+ w5)
        w6 = schedule(w4, w15, w7, w6)
        round(c, d, e, &f, g, h, a, &b, 0x5b9c_ca4f &+ w6)
        w7 = schedule(w5, w0, w8, w7)
        round(b, c, d, &e, f, g, h, &a, 0x682e_6ff3 &+ w7)
        w8 = schedule(w6, w1, w9, w8)
        round(a, b, c, &d, e, f, g, &h, 0x748f_82ee &+ w8)
        w9 = schedule(w7, w2, w10, w9)
        round(h, a, b, &c, d, e, f, &g, 0x78a5_636f &+ w9)
        w10 = schedule(w8, w3, w11, w10)
        round(g, h, a, &b, c, d, e, &f, 0x84c8_7814 &+ w10)
        w11 = schedule(w9, w4, w12, w11)
        round(f, g, h, &a, b, c, d, &e, 0x8cc7_0208 &+ w11)
        w12 = schedule(w10, w5, w13, w12)
        round(e, f, g, &h, a, b, c, &d, 0x90be_fffa &+ w12)
        w13 = schedule(w11, w6, w14, w13)
        round(d, e, f, &g, h, a, b, &c, 0xa450_6ceb &+ w13)
        w14 = schedule(w12, w7, w15, w14)
        round(c, d, e, &f, g, h, a, &b, 0xbef9_a3f7 &+ w14)
        w15 = schedule(w13, w8, w0, w15)
        round(b, c, d, &e, f, g, h, &a, 0xc671_78f2 &+ w15)
        state.a &+= a; state.b &+= b; state.c &+= c; state.d &+= d
        state.e &+= e; state.f &+= f; state.g &+= g; state.h &+= h
    }

    /// W[t] = σ1(W[t-2]) + W[t-7] + σ0(W[t-15]) + W[t-16].
    @inline(__always)
    private static func schedule(_ minus2: UInt32, _ minus7: UInt32, _ minus15: UInt32, _ minus16: UInt32) -> UInt32 {
        let sigma0 = minus15.rotatedRight(7) ^ minus15.rotatedRight(18) ^ (minus15 >> 3)
        let sigma1 = minus2.rotatedRight(17) ^ minus2.rotatedRight(19) ^ (minus2 >> 10)
        return sigma1 &+ minus7 &+ sigma0 &+ minus16
    }

    /// One round: T1 = h + Σ1(e) + Ch(e, f, g) + K[t] + W[t]; T2 = Σ0(a) + Maj(a, b, c);
    /// d += T1; h = T1 + T2. The caller renames the variables for the next round.
    @inline(__always)
    private static func round(
        _ a: UInt32, _ b: UInt32, _ c: UInt32, _ d: inout UInt32,
        _ e: UInt32, _ f: UInt32, _ g: UInt32, _ h: inout UInt32, _ constantPlusWord: UInt32
    ) {
        let sum1 = e.rotatedRight(6) ^ e.rotatedRight(11) ^ e.rotatedRight(25)
        let choose = (e & f) ^ (~e & g)
        let t1 = h &+ sum1 &+ choose &+ constantPlusWord
        let sum0 = a.rotatedRight(2) ^ a.rotatedRight(13) ^ a.rotatedRight(22)
        let majority = (a & b) ^ (a & c) ^ (b & c)
        d &+= t1
        h = t1 &+ sum0 &+ majority
    }
}

extension UInt32 {
    @inline(__always)
    fileprivate func rotatedRight(_ count: UInt32) -> UInt32 { (self >> count) | (self << (32 &- count)) }
}

/// HMAC-SHA256 (RFC 2104). The key's padded blocks are absorbed when it is made; copies of a
/// keyed `HMACSHA256` each authenticate one message without hashing the key again.
public struct HMACSHA256: Sendable {
    private var inner: SHA256Hasher
    private let outer: SHA256Hasher

    public init(key: [UInt8]) {
        var block = key.count > SHA256Hasher.blockSize ? SHA256Hasher.hash(key).bytes : key
        block += [UInt8](repeating: 0, count: SHA256Hasher.blockSize - block.count)
        var inner = SHA256Hasher()
        inner.update(block.map { $0 ^ 0x36 })
        var outer = SHA256Hasher()
        outer.update(block.map { $0 ^ 0x5c })
        self.inner = inner
        self.outer = outer
    }

    public static func authenticationCode(for message: [UInt8], key: [UInt8]) -> SHA256Hasher.Digest {
        var hmac = HMACSHA256(key: key)
        hmac.update(message)
        return hmac.finalize()
    }

    public mutating func update(_ bytes: [UInt8]) { inner.update(bytes) }
    public mutating func update(_ bytes: ArraySlice<UInt8>) { inner.update(bytes) }
    public mutating func update(_ bytes: UnsafeRawBufferPointer) { inner.update(bytes) }

    public consuming func finalize() -> SHA256Hasher.Digest {
        var outer = self.outer
        inner.finalize().withUnsafeBytes { outer.update($0) }
        return outer.finalize()
    }
}
