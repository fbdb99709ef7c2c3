// Written by hand, in the shape protoc-gen-swift 1.39 generates, for this proto3 file (building the
// protoc plugin here costs ~10 minutes, for two small messages):
//
//   syntax = "proto3";
//   package warmpool.baseline;
//   message Beat {
//     uint32 sequence = 1;        uint64 sent_at_ns = 2;      uint32 flags = 3;
//     uint32 gpu_count = 4;       uint32 gpu_healthy = 5;     uint32 gpu_max_temp_c = 6;
//     uint32 gpu_max_util_pct = 7; uint32 volume_free_mib = 8; uint32 workload = 9;
//   }
//   message Lease { uint32 acknowledged_sequence = 1; uint32 lease_ms = 2; uint64 epoch = 3; }
//   service Liveness { rpc Beats(stream Beat) returns (stream Lease); }
//
// The fields are our Heartbeat's (Protocol/PROTOCOL.md §3), one for one.
import SwiftProtobuf

fileprivate struct _GeneratedWithProtocGenSwiftVersion: ProtobufAPIVersionCheck {
    struct _2: ProtobufAPIVersion_2 {}
    typealias Version = _2
}

public struct Warmpool_Baseline_Beat: Sendable {
    public var sequence: UInt32 = 0
    public var sentAtNs: UInt64 = 0
    public var flags: UInt32 = 0
    public var gpuCount: UInt32 = 0
    public var gpuHealthy: UInt32 = 0
    public var gpuMaxTempC: UInt32 = 0
    public var gpuMaxUtilPct: UInt32 = 0
    public var volumeFreeMib: UInt32 = 0
    public var workload: UInt32 = 0
    public var unknownFields = UnknownStorage()
    public init() {}
}

public struct Warmpool_Baseline_Lease: Sendable {
    public var acknowledgedSequence: UInt32 = 0
    public var leaseMs: UInt32 = 0
    public var epoch: UInt64 = 0
    public var unknownFields = UnknownStorage()
    public init() {}
}

fileprivate let _protobuf_package = "warmpool.baseline"

extension Warmpool_Baseline_Beat: Message, _MessageImplementationBase, _ProtoNameProviding {
    public static let protoMessageName: String = _protobuf_package + ".Beat"
    public static let _protobuf_nameMap = _NameMap(
        bytecode: "\0\u{1}sequence\0\u{3}sent_at_ns\0\u{1}flags\0\u{3}gpu_count\0\u{3}gpu_healthy\0\u{3}gpu_max_temp_c\0\u{3}gpu_max_util_pct\0\u{3}volume_free_mib\0\u{1}workload\0")

    public mutating func decodeMessage<D: Decoder>(decoder: inout D) throws {
        while let fieldNumber = try decoder.nextFieldNumber() {
            switch fieldNumber {
            case 1: try decoder.decodeSingularUInt32Field(value: &sequence)
            case 2: try decoder.decodeSingularUInt64Field(value: &sentAtNs)
            case 3: try decoder.decodeSingularUInt32Field(value: &flags)
            case 4: try decoder.decodeSingularUInt32Field(value: &gpuCount)
            case 5: try decoder.decodeSingularUInt32Field(value: &gpuHealthy)
            case 6: try decoder.decodeSingularUInt32Field(value: &gpuMaxTempC)
            case 7: try decoder.decodeSingularUInt32Field(value: &gpuMaxUtilPct)
            case 8: try decoder.decodeSingularUInt32Field(value: &volumeFreeMib)
            case 9: try decoder.decodeSingularUInt32Field(value: &workload)
            default: break
            }
        }
    }

    public func traverse<V: Visitor>(visitor: inout V) throws {
        if sequence != 0 { try visitor.visitSingularUInt32Field(value: sequence, fieldNumber: 1) }
        if sentAtNs != 0 { try visitor.visitSingularUInt64Field(value: sentAtNs, fieldNumber: 2) }
        if flags != 0 { try visitor.visitSingularUInt32Field(value: flags, fieldNumber: 3) }
        if gpuCount != 0 { try visitor.visitSingularUInt32Field(value: gpuCount, fieldNumber: 4) }
        if gpuHealthy != 0 { try visitor.visitSingularUInt32Field(value: gpuHealthy, fieldNumber: 5) }
        if gpuMaxTempC != 0 { try visitor.visitSingularUInt32Field(value: gpuMaxTempC, fieldNumber: 6) }
        if gpuMaxUtilPct != 0 { try visitor.visitSingularUInt32Field(value: gpuMaxUtilPct, fieldNumber: 7) }
        if volumeFreeMib != 0 { try visitor.visitSingularUInt32Field(value: volumeFreeMib, fieldNumber: 8) }
        if workload != 0 { try visitor.visitSingularUInt32Field(value: workload, fieldNumber: 9) }
        try unknownFields.traverse(visitor: &visitor)
    }

    public static func == (lhs: Self, rhs: Self) -> Bool {
        lhs.sequence == rhs.sequence && lhs.sentAtNs == rhs.sentAtNs && lhs.flags == rhs.flags
            && lhs.gpuCount == rhs.gpuCount && lhs.gpuHealthy == rhs.gpuHealthy && lhs.gpuMaxTempC == rhs.gpuMaxTempC
            && lhs.gpuMaxUtilPct == rhs.gpuMaxUtilPct && lhs.volumeFreeMib == rhs.volumeFreeMib
            && lhs.workload == rhs.workload && lhs.unknownFields == rhs.unknownFields
    }
}

extension Warmpool_Baseline_Lease: Message, _MessageImplementationBase, _ProtoNameProviding {
    public static let protoMessageName: String = _protobuf_package + ".Lease"
    public static let _protobuf_nameMap = _NameMap(
        bytecode: "\0\u{3}acknowledged_sequence\0\u{3}lease_ms\0\u{1}epoch\0")

    public mutating func decodeMessage<D: Decoder>(decoder: inout D) throws {
        while let fieldNumber = try decoder.nextFieldNumber() {
            switch fieldNumber {
            case 1: try decoder.decodeSingularUInt32Field(value: &acknowledgedSequence)
            case 2: try decoder.decodeSingularUInt32Field(value: &leaseMs)
            case 3: try decoder.decodeSingularUInt64Field(value: &epoch)
            default: break
            }
        }
    }

    public func traverse<V: Visitor>(visitor: inout V) throws {
        if acknowledgedSequence != 0 { try visitor.visitSingularUInt32Field(value: acknowledgedSequence, fieldNumber: 1) }
        if leaseMs != 0 { try visitor.visitSingularUInt32Field(value: leaseMs, fieldNumber: 2) }
        if epoch != 0 { try visitor.visitSingularUInt64Field(value: epoch, fieldNumber: 3) }
        try unknownFields.traverse(visitor: &visitor)
    }

    public static func == (lhs: Self, rhs: Self) -> Bool {
        lhs.acknowledgedSequence == rhs.acknowledgedSequence && lhs.leaseMs == rhs.leaseMs && lhs.epoch == rhs.epoch
            && lhs.unknownFields == rhs.unknownFields
    }
}
