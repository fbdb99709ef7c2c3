import Crypto
import Foundation
import WarmpoolWire

/// Why a chunk could not be opened: each a refusal, never a guess.
public enum ChunkError: Error, Equatable, CustomStringConvertible {
    /// The ciphertext, its nonce or its tag was changed, it was sealed under another key, or it
    /// is another chunk's object (the id is authenticated with it).
    case notAuthentic(id: String)
    /// It decrypted, but is no zstd frame this reader accepts.
    case undecodable(id: String, reason: String)
    /// It decrypted and decompressed to bytes whose keyed hash is not the id it was stored under.
    case wrongContent(id: String)

    public var description: String {
        switch self {
        case .notAuthentic(let id): "chunk \(id) failed authentication (changed, another key's, or another chunk's object)"
        case .undecodable(let id, let reason): "chunk \(id) is not a zstd frame: \(reason)"
        case .wrongContent(let id): "chunk \(id) does not hold the content its id names"
        }
    }
}

/// How a chunk of `/data` leaves the host: named by a keyed hash of its plaintext (so the store,
/// a third party, cannot confirm that a volume holds a known file, and an unchanged chunk has
/// the same name in every snapshot: it is uploaded once), compressed with zstd, then sealed with
/// ChaCha20-Poly1305 (the hosts of a marketplace can read their disks; the store can read its
/// objects) with the id as associated data, so an object swapped for another's does not open.
///
/// Stored object: 12-byte nonce, ciphertext, 16-byte tag. The two keys are derived from one
/// 32-byte snapshot key with HKDF-SHA256, so one secret is all an operator keeps.
public struct ChunkSealer: Sendable {
    private let idKey: SymmetricKey
    private let dataKey: SymmetricKey
    public let compressionLevel: Int32

    public init(snapshotKey: [UInt8], compressionLevel: Int32 = 3) {
        precondition(snapshotKey.count == 32, "the snapshot key is 32 bytes")
        let master = SymmetricKey(data: snapshotKey)
        idKey = HKDF<SHA256>.deriveKey(inputKeyMaterial: master, info: Array("warmpool snapshot chunk id v1".utf8), outputByteCount: 32)
        dataKey = HKDF<SHA256>.deriveKey(inputKeyMaterial: master, info: Array("warmpool snapshot chunk data v1".utf8), outputByteCount: 32)
        self.compressionLevel = compressionLevel
    }

    /// The chunk's name: HMAC-SHA256 under the id key, in hex.
    public func id(of plaintext: some DataProtocol) -> String {
        Array(HMAC<SHA256>.authenticationCode(for: plaintext, using: idKey)).hexString
    }

    /// The id and the object to store.
    public func seal(_ plaintext: [UInt8]) throws -> (id: String, object: [UInt8]) {
        let id = id(of: plaintext)
        let object = try plaintext.withUnsafeBytes { try seal($0, id: id, codec: ChunkCodec(level: compressionLevel)) }
        return (id, Array(object))
    }

    /// The object to store for a chunk whose id the caller already computed (a snapshot names
    /// every chunk to find the new ones, and seals only those), with a reused codec.
    func seal(_ plaintext: UnsafeRawBufferPointer, id: String, codec: ChunkCodec) throws -> Data {
        let compressed = codec.compressor.compress(plaintext)
        return try ChaChaPoly.seal(compressed, using: dataKey, authenticating: Array(id.utf8)).combined
    }

    /// The same for a snapshot's chunk, whose plaintext is released once compressed (before the
    /// cipher makes its copies): one less chunk-sized buffer per chunk at the moment of most.
    func seal(_ box: PlaintextBox, id: String, codec: ChunkCodec) throws -> Data {
        let compressed = box.withBytes { codec.compressor.compress($0) }
        box.release()
        return try ChaChaPoly.seal(compressed, using: dataKey, authenticating: Array(id.utf8)).combined
    }

    /// The plaintext of the object stored under `id`, verified: authentic, and the content its
    /// id names. `maximumSize`: the largest chunk the reader accepts (the chunker's maximum).
    public func open(_ object: [UInt8], id: String, maximumSize: Int) throws(ChunkError) -> [UInt8] {
        try open(Data(object), id: id, maximumSize: maximumSize, codec: ChunkCodec(level: compressionLevel))
    }

    func open(_ object: Data, id: String, maximumSize: Int, codec: ChunkCodec) throws(ChunkError) -> [UInt8] {
        let compressed: Data
        do {
            compressed = try ChaChaPoly.open(ChaChaPoly.SealedBox(combined: object), using: dataKey, authenticating: Array(id.utf8))
        } catch {
            throw .notAuthentic(id: id)
        }
        let plaintext: [UInt8]
        do {
            plaintext = try compressed.withUnsafeBytes { (bytes) throws(ZstdDecompressor.Failure) in
                try codec.decompressor.decompress(bytes, maximumSize: maximumSize)
            }
        } catch {
            throw .undecodable(id: id, reason: "\(error)")
        }
        guard self.id(of: plaintext) == id else { throw .wrongContent(id: id) }
        return plaintext
    }

    /// A snapshot key as an operator keeps it: 64 hex characters; nil for anything else.
    public static func snapshotKey(hex: String) -> [UInt8]? {
        [UInt8](hexString: hex).flatMap { $0.count == 32 ? $0 : nil }
    }
}

extension ChunkSealer {
    /// A manifest (or any other named document) sealed like a chunk, but bound to its name
    /// instead of a content hash: it is found by name, and must not open under another.
    public func sealDocument(_ plaintext: [UInt8], name: String) throws -> [UInt8] {
        let compressed = Zstd.compress(plaintext, level: compressionLevel)
        return Array(try ChaChaPoly.seal(compressed, using: dataKey, authenticating: Array("document:\(name)".utf8)).combined)
    }

    public func openDocument(_ object: [UInt8], name: String, maximumSize: Int) throws(ChunkError) -> [UInt8] {
        let compressed: Data
        do {
            compressed = try ChaChaPoly.open(ChaChaPoly.SealedBox(combined: object), using: dataKey,
                                             authenticating: Array("document:\(name)".utf8))
        } catch {
            throw .notAuthentic(id: name)
        }
        do {
            return try Zstd.decompress(Array(compressed), maximumSize: maximumSize)
        } catch {
            throw .undecodable(id: name, reason: "\(error)")
        }
    }
}
