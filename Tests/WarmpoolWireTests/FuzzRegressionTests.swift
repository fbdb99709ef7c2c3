import Foundation
import NIOCore
import Testing
@testable import WarmpoolWire

/// Inputs the fuzzer (Scripts/fuzz, `Scripts/drill fuzz`) found crashing, kept as regression
/// tests in Protocol/vectors/fuzz/ (plus hand-made malicious seeds). Each file is a fuzzer input:
/// two control bytes (defined in that directory's README.md), then the stream a peer sent. Fed
/// whole and byte at a time, the parser must give the same frames and the same verdict, and every
/// body decoder must return or throw.
@Suite struct FuzzRegressionTests {
    static let directory = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Protocol/vectors/fuzz")

    static var inputs: [URL] {
        ((try? FileManager.default.contentsOfDirectory(at: directory, includingPropertiesForKeys: nil)) ?? [])
            .filter { !$0.lastPathComponent.hasPrefix(".") && $0.lastPathComponent != "README.md" }
            .sorted { $0.path < $1.path }
    }

    /// Frames parsed from `chunks` fed in turn, and whether the stream was refused.
    static func parse(_ chunks: [[UInt8]]) -> (frames: [[UInt8]], refused: Bool) {
        let parser = FrameParser()
        var buffer = ByteBuffer()
        var frames: [[UInt8]] = []
        for chunk in chunks {
            buffer.writeBytes(chunk)
            do {
                while let frame = try parser.parse(&buffer) {
                    var bytes = ByteBuffer()
                    frame.write(into: &bytes)
                    frames.append(Array(buffer: bytes))
                    let payload = frame.payload
                    _ = try? Hello.decode(payload)
                    _ = try? Challenge.decode(payload)
                    _ = try? Proof.decode(payload)
                    _ = try? Welcome.decode(payload)
                    _ = try? Reject.decode(payload)
                    _ = try? Heartbeat.decode(payload, flags: frame.flags, sequence: 1, after: nil)
                    _ = try? LeaseGrant.decode(payload, sequence: 1, lastSent: 1)
                    _ = try? Goodbye.decode(payload, sequence: 1)
                }
            } catch {
                return (frames, true)
            }
        }
        return (frames, false)
    }

    @Test func thereAreInputs() {
        #expect(!Self.inputs.isEmpty, "no inputs in \(Self.directory.path)")
    }

    /// The verdicts Protocol/vectors/fuzz/README.md gives for the hand-made seeds.
    static let seedVerdicts: [String: ProtocolViolation] = [
        "seed-length-field-too-long": .lengthFieldTooLong,
        "seed-length-over-maximum": .frameTooLarge(claimed: 65_537, maximum: Frame.maximumLength),
        "seed-non-minimal-length": .nonMinimalLength,
        "seed-oversized-length": .lengthFieldTooLong,
        "seed-zero-length-unknown-type": .versionOneFrame,
    ]

    @Test func eachSeedIsRefusedAsTheReadmeSays() throws {
        let seeds = Self.inputs.filter { $0.lastPathComponent.hasPrefix("seed-") }
        #expect(Set(seeds.map(\.lastPathComponent)) == Set(Self.seedVerdicts.keys))
        for file in seeds {
            var stream = ByteBuffer(bytes: Array(try Data(contentsOf: file).dropFirst(2)))
            let expected = try #require(Self.seedVerdicts[file.lastPathComponent])
            #expect(throws: expected, "\(file.lastPathComponent)") { try FrameParser().parse(&stream) }
        }
    }

    @Test(arguments: inputs)
    func replays(_ file: URL) throws {
        let stream = Array(try Data(contentsOf: file).dropFirst(2))
        let whole = Self.parse([stream])
        let byteAtATime = Self.parse(stream.map { [$0] })
        #expect(whole.frames == byteAtATime.frames, "\(file.lastPathComponent)")
        #expect(whole.refused == byteAtATime.refused, "\(file.lastPathComponent)")
    }
}
