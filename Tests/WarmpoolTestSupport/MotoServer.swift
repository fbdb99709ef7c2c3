import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A real S3 server on loopback: moto's standalone server from Scripts/setup's venv, started so
/// that it authenticates every request after the three that make our user (it checks SigV4
/// signatures with its own implementation). What our client writes, boto3 reads, and the other
/// way round.
public final class MotoServer {
    public static let venv = "/opt/warmpool-venv/bin"
    public let url: String
    /// The access key id and secret of the user the bootstrap made.
    public let accessKeyID: String
    public let secretAccessKey: String
    /// Spawned directly, not with Foundation's Process, whose waitUntilExit waits for every
    /// descriptor the child inherited to close (the server's threads keep them).
    private let pid: pid_t

    /// A free port is free only until someone else binds it: a server that lost that race is
    /// started again on another, up to three times.
    /// `reachableAt`: an address of this machine that other network namespaces reach (an
    /// emulated VM's): the server then listens on every address and its URL names that one.
    public convenience init(reachableAt address: String? = nil) throws {
        var attempt = 0
        while true {
            attempt += 1
            do {
                try self.init(port: try freeLoopbackPort(), address: address)
                return
            } catch let error as PortTaken where attempt < 3 {
                _ = error
            }
        }
    }

    struct PortTaken: Error {}

    private init(port: Int, address: String?) throws {
        guard FileManager.default.isExecutableFile(atPath: Self.venv + "/moto_server") else {
            throw HarnessError("\(Self.venv)/moto_server is missing: run Scripts/setup")
        }
        url = "http://\(address ?? "127.0.0.1"):\(port)"
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, NSTemporaryDirectory() + "warmpool-moto-\(port).log", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let arguments = [Self.venv + "/moto_server", "-H", address == nil ? "127.0.0.1" : "0.0.0.0", "-p", "\(port)"]
        let environment = ProcessInfo.processInfo.environment.merging(["INITIAL_NO_AUTH_ACTION_COUNT": "3"]) { $1 }.map { "\($0.key)=\($0.value)" }
        let argv = arguments.map { strdup($0) } + [nil]
        let envp = environment.map { strdup($0) } + [nil]
        defer { (argv + envp).forEach { free($0) } }
        var child: pid_t = 0
        guard posix_spawn(&child, arguments[0], &actions, nil, argv, envp) == 0 else { throw HarnessError("cannot start moto_server") }
        pid = child
        let deadline = Date().addingTimeInterval(20)
        while !Self.accepts(port: port) {
            guard Date() < deadline, waitpid(child, nil, WNOHANG) == 0 else {
                kill(child, SIGKILL)
                let log = (try? String(contentsOfFile: NSTemporaryDirectory() + "warmpool-moto-\(port).log", encoding: .utf8)) ?? ""
                if log.contains("Address already in use") { throw PortTaken() }
                throw HarnessError("moto_server did not start on \(port): \(log.suffix(300))")
            }
            usleep(50_000)
        }
        do {
            let words = try Self.peer(["bootstrap", url]).split(whereSeparator: \.isWhitespace).map(String.init)
            guard words.count == 2 else { throw HarnessError("s3-peer bootstrap printed \(words)") }
            accessKeyID = words[0]
            secretAccessKey = words[1]
        } catch {
            kill(child, SIGKILL)
            waitpid(child, nil, 0)
            throw error
        }
    }

    deinit {
        // The server's werkzeug ignores SIGTERM.
        kill(pid, SIGKILL)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    }

    /// Runs Scripts/s3-peer (boto3) and returns what it printed.
    @discardableResult
    public static func peer(_ arguments: [String]) throws -> String {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return try Command.runChecked(venv + "/python", [root.path + "/Scripts/s3-peer"] + arguments)
    }

    public static func accepts(port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port)).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
    }
}


/// A loopback port nothing listens on right now (bound to port 0, read, released).
public func freeLoopbackPort() throws -> Int {
    let (socket, port) = try loopbackSocket(listening: false)
    close(socket)
    return port
}

/// A TCP socket bound to a free loopback port (listening, if asked: connects then succeed
/// whether or not anyone accepts); the caller closes it.
public func loopbackSocket(listening: Bool) throws -> (socket: Int32, port: Int) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
    }
    guard bound, !listening || listen(fd, 64) == 0 else {
        close(fd)
        throw HarnessError("cannot bind a loopback socket: errno \(errno)")
    }
    return (fd, Int(UInt16(bigEndian: address.sin_port)))
}
