#if canImport(Glibc)
import Glibc
#endif

public struct GPUInfo: Hashable, Sendable, Codable {
    public var index: Int
    public var name: String?
    public var uuid: String?
    public var temperatureCelsius: Int?
    public var utilizationPercent: Int?
    public var memoryTotalBytes: UInt64?
    public var memoryUsedBytes: UInt64?
    /// Uncorrected ECC errors since the driver loaded; nil where the GPU has no ECC.
    public var eccUncorrectedVolatile: UInt64?
    /// Critical XID events seen since this agent started watching.
    public var xidCriticalErrors: Int
    public var lastXid: UInt64?
    public var healthy: Bool
}

public struct GPUReport: Hashable, Sendable, Codable {
    /// True when NVML loaded and initialised.
    public var available: Bool
    /// Why NVML gave nothing, in words ("libnvidia-ml.so.1: cannot open shared object file ...").
    public var problem: String?
    public var driverVersion: String?
    public var gpus: [GPUInfo]

    public static func unavailable(_ problem: String) -> GPUReport {
        GPUReport(available: false, problem: problem, driverVersion: nil, gpus: [])
    }
}

/// NVML, loaded at run time with dlopen so the agent runs on hosts without an NVIDIA driver.
/// Not thread-safe: one probe thread owns it.
public final class NVMLProbe {
    private typealias NVMLReturn = Int32
    private typealias Device = OpaquePointer
    private typealias EventSet = OpaquePointer

    private struct Utilization { var gpu: UInt32 = 0; var memory: UInt32 = 0 }
    private struct Memory { var total: UInt64 = 0; var free: UInt64 = 0; var used: UInt64 = 0 }
    private struct EventData {
        var device: Device? = nil
        var eventType: UInt64 = 0
        var eventData: UInt64 = 0
        var gpuInstanceID: UInt32 = 0
        var computeInstanceID: UInt32 = 0
    }

    private static let success: NVMLReturn = 0
    private static let xidCriticalError: UInt64 = 0x8
    private static let temperatureSensorGPU: Int32 = 0
    private static let memoryErrorUncorrected: Int32 = 1
    private static let eccCounterVolatile: Int32 = 0

    private let handle: UnsafeMutableRawPointer
    private let shutdown: @convention(c) () -> NVMLReturn
    private let errorString: @convention(c) (NVMLReturn) -> UnsafePointer<CChar>?
    private let deviceCount: @convention(c) (UnsafeMutablePointer<UInt32>) -> NVMLReturn
    private let handleByIndex: @convention(c) (UInt32, UnsafeMutablePointer<Device?>) -> NVMLReturn
    private let name: @convention(c) (Device, UnsafeMutablePointer<CChar>, UInt32) -> NVMLReturn
    private let uuid: @convention(c) (Device, UnsafeMutablePointer<CChar>, UInt32) -> NVMLReturn
    private let temperature: @convention(c) (Device, Int32, UnsafeMutablePointer<UInt32>) -> NVMLReturn
    private let utilization: @convention(c) (Device, UnsafeMutableRawPointer) -> NVMLReturn
    private let memoryInfo: @convention(c) (Device, UnsafeMutableRawPointer) -> NVMLReturn
    private let eccErrors: (@convention(c) (Device, Int32, Int32, UnsafeMutablePointer<UInt64>) -> NVMLReturn)?
    private let driverVersion: @convention(c) (UnsafeMutablePointer<CChar>, UInt32) -> NVMLReturn
    private let eventSetCreate: (@convention(c) (UnsafeMutablePointer<EventSet?>) -> NVMLReturn)?
    private let registerEvents: (@convention(c) (Device, UInt64, EventSet) -> NVMLReturn)?
    private let eventSetWait: (@convention(c) (EventSet, UnsafeMutableRawPointer, UInt32) -> NVMLReturn)?
    private let eventSetFree: (@convention(c) (EventSet) -> NVMLReturn)?

    private var eventSet: EventSet?
    private var xidCounts: [Int: Int] = [:]
    private var lastXids: [Int: UInt64] = [:]

    public enum LoadError: Error, Equatable, CustomStringConvertible {
        case notFound(String)
        case missingSymbol(String)
        case initFailed(String)

        public var description: String {
            switch self {
            case .notFound(let detail): "NVML not available: \(detail)"
            case .missingSymbol(let symbol): "NVML library lacks \(symbol)"
            case .initFailed(let detail): "nvmlInit_v2 failed: \(detail)"
            }
        }
    }

    public init(library: String = "libnvidia-ml.so.1") throws {
        guard let handle = dlopen(library, RTLD_NOW | RTLD_LOCAL) else {
            throw LoadError.notFound(dlerror().map { String(cString: $0) } ?? library)
        }
        func symbol<T>(_ name: String, as type: T.Type) throws -> T {
            guard let pointer = dlsym(handle, name) else { throw LoadError.missingSymbol(name) }
            return unsafeBitCast(pointer, to: type)
        }
        func optionalSymbol<T>(_ name: String, as type: T.Type) -> T? {
            dlsym(handle, name).map { unsafeBitCast($0, to: type) }
        }
        do {
            let initialise = try symbol("nvmlInit_v2", as: (@convention(c) () -> NVMLReturn).self)
            self.shutdown = try symbol("nvmlShutdown", as: (@convention(c) () -> NVMLReturn).self)
            self.errorString = try symbol("nvmlErrorString", as: (@convention(c) (NVMLReturn) -> UnsafePointer<CChar>?).self)
            self.deviceCount = try symbol("nvmlDeviceGetCount_v2", as: (@convention(c) (UnsafeMutablePointer<UInt32>) -> NVMLReturn).self)
            self.handleByIndex = try symbol(
                "nvmlDeviceGetHandleByIndex_v2", as: (@convention(c) (UInt32, UnsafeMutablePointer<Device?>) -> NVMLReturn).self)
            self.name = try symbol("nvmlDeviceGetName", as: (@convention(c) (Device, UnsafeMutablePointer<CChar>, UInt32) -> NVMLReturn).self)
            self.uuid = try symbol("nvmlDeviceGetUUID", as: (@convention(c) (Device, UnsafeMutablePointer<CChar>, UInt32) -> NVMLReturn).self)
            self.temperature = try symbol(
                "nvmlDeviceGetTemperature", as: (@convention(c) (Device, Int32, UnsafeMutablePointer<UInt32>) -> NVMLReturn).self)
            self.utilization = try symbol(
                "nvmlDeviceGetUtilizationRates", as: (@convention(c) (Device, UnsafeMutableRawPointer) -> NVMLReturn).self)
            self.memoryInfo = try symbol("nvmlDeviceGetMemoryInfo", as: (@convention(c) (Device, UnsafeMutableRawPointer) -> NVMLReturn).self)
            self.driverVersion = try symbol(
                "nvmlSystemGetDriverVersion", as: (@convention(c) (UnsafeMutablePointer<CChar>, UInt32) -> NVMLReturn).self)
            self.eccErrors = optionalSymbol(
                "nvmlDeviceGetTotalEccErrors",
                as: (@convention(c) (Device, Int32, Int32, UnsafeMutablePointer<UInt64>) -> NVMLReturn).self)
            self.eventSetCreate = optionalSymbol("nvmlEventSetCreate", as: (@convention(c) (UnsafeMutablePointer<EventSet?>) -> NVMLReturn).self)
            self.registerEvents = optionalSymbol("nvmlDeviceRegisterEvents", as: (@convention(c) (Device, UInt64, EventSet) -> NVMLReturn).self)
            self.eventSetWait = optionalSymbol("nvmlEventSetWait_v2", as: (@convention(c) (EventSet, UnsafeMutableRawPointer, UInt32) -> NVMLReturn).self)
            self.eventSetFree = optionalSymbol("nvmlEventSetFree", as: (@convention(c) (EventSet) -> NVMLReturn).self)
            let result = initialise()
            guard result == Self.success else {
                let message = errorString(result).map { String(cString: $0) } ?? "error \(result)"
                throw LoadError.initFailed(message)
            }
        } catch {
            dlclose(handle)
            throw error
        }
        self.handle = handle
        registerForXidEvents()
    }

    deinit {
        if let eventSet, let eventSetFree { _ = eventSetFree(eventSet) }
        _ = shutdown()
        dlclose(handle)
    }

    public func probe() -> GPUReport {
        drainXidEvents()
        var count: UInt32 = 0
        let result = deviceCount(&count)
        guard result == Self.success else { return .unavailable("nvmlDeviceGetCount_v2: \(describe(result))") }
        var gpus: [GPUInfo] = []
        for index in 0..<Int(count) {
            var device: Device?
            guard handleByIndex(UInt32(index), &device) == Self.success, let device else {
                gpus.append(GPUInfo(index: index, xidCriticalErrors: 0, healthy: false))
                continue
            }
            var info = GPUInfo(index: index, xidCriticalErrors: xidCounts[index] ?? 0, lastXid: lastXids[index], healthy: true)
            info.name = readString(capacity: 96) { name(device, $0, $1) }
            info.uuid = readString(capacity: 96) { uuid(device, $0, $1) }
            var celsius: UInt32 = 0
            if temperature(device, Self.temperatureSensorGPU, &celsius) == Self.success { info.temperatureCelsius = Int(celsius) }
            var rates = Utilization()
            if utilization(device, &rates) == Self.success { info.utilizationPercent = Int(rates.gpu) }
            var memory = Memory()
            if memoryInfo(device, &memory) == Self.success {
                info.memoryTotalBytes = memory.total
                info.memoryUsedBytes = memory.used
            }
            var ecc: UInt64 = 0
            if let eccErrors, eccErrors(device, Self.memoryErrorUncorrected, Self.eccCounterVolatile, &ecc) == Self.success {
                info.eccUncorrectedVolatile = ecc
            }
            info.healthy = info.name != nil && (info.eccUncorrectedVolatile ?? 0) == 0 && info.xidCriticalErrors == 0
            gpus.append(info)
        }
        let driver = readString(capacity: 96) { driverVersion($0, $1) }
        return GPUReport(available: true, problem: nil, driverVersion: driver, gpus: gpus)
    }

    private func registerForXidEvents() {
        guard let eventSetCreate, let registerEvents else { return }
        var set: EventSet?
        guard eventSetCreate(&set) == Self.success, let set else { return }
        eventSet = set
        var count: UInt32 = 0
        guard deviceCount(&count) == Self.success else { return }
        for index in 0..<count {
            var device: Device?
            if handleByIndex(index, &device) == Self.success, let device {
                _ = registerEvents(device, Self.xidCriticalError, set)
            }
        }
    }

    /// Takes every pending XID event without waiting (timeout 0).
    private func drainXidEvents() {
        guard let eventSet, let eventSetWait else { return }
        for _ in 0..<64 {
            var data = EventData()
            guard eventSetWait(eventSet, &data, 0) == Self.success else { return }
            guard data.eventType & Self.xidCriticalError != 0 else { continue }
            let index = indexOf(data.device) ?? -1
            xidCounts[index, default: 0] += 1
            lastXids[index] = data.eventData
        }
    }

    private func indexOf(_ device: Device?) -> Int? {
        guard let device else { return nil }
        var count: UInt32 = 0
        guard deviceCount(&count) == Self.success else { return nil }
        for index in 0..<count {
            var candidate: Device?
            if handleByIndex(index, &candidate) == Self.success, candidate == device { return Int(index) }
        }
        return nil
    }

    private func readString(capacity: Int, _ call: (UnsafeMutablePointer<CChar>, UInt32) -> NVMLReturn) -> String? {
        var buffer = [CChar](repeating: 0, count: capacity)
        let result = buffer.withUnsafeMutableBufferPointer { call($0.baseAddress!, UInt32(capacity)) }
        guard result == Self.success else { return nil }
        let bytes = buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }
        return String(decoding: bytes, as: UTF8.self)
    }

    private func describe(_ result: NVMLReturn) -> String {
        errorString(result).map { String(cString: $0) } ?? "error \(result)"
    }
}
