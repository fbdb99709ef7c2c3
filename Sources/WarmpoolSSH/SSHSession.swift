import WarmpoolModel
import CLibSSH2

#if canImport(Glibc)
import Glibc
#endif

/// libssh2_init once per process (it sets up the crypto backend; not thread-safe to race).
/// Never undone: sessions may be created until the process exits.
private let libssh2Initialised: Int32 = libssh2_init(0)

/// One SSH connection: owns the TCP socket and the `LIBSSH2_SESSION`, and frees both on every
/// path. Blocking: every method waits on the socket (with `poll`, never past its deadline), so
/// call it only from a thread that may block (the verifier's thread pool), never an event loop.
///
/// libssh2 runs in non-blocking mode; each call that answers EAGAIN is retried after `poll` on
/// the directions libssh2 says it is blocked on. Deadlines are absolute CLOCK_MONOTONIC times.
/// Not thread-safe: one thread uses a session at a time.
final class SSHSession {
    private var fd: Int32
    private var session: OpaquePointer?
    private var handshaken = false
    private(set) var remoteBanner: String?

    /// Connected to `host:port`, with TCP_NODELAY, or a failure (refused, timeout, unreachable).
    static func connect(host: String, port: Int, deadline: Int64) -> Result<SSHSession, SSHFailure> {
        precondition(libssh2Initialised == 0, "libssh2_init failed")
        let addresses: [Resolver.Address]
        switch Resolver.resolve(host: host, port: port, deadline: deadline) {
        case .success(let resolved): addresses = resolved
        case .failure(let failure): return .failure(failure)
        }
        var lastFailure = SSHFailure(.unreachable, phase: .connect, "no usable address for \(host)")
        for address in addresses {
            switch connectOne(address, deadline: deadline) {
            case .success(let fd):
                guard let session = SSHSession(fd: fd) else {
                    return .failure(SSHFailure(.handshakeFailed, phase: .handshake, "libssh2 could not allocate a session"))
                }
                return .success(session)
            case .failure(let failure):
                lastFailure = failure
                if failure.reason == .timeout { return .failure(failure) }
            }
        }
        return .failure(lastFailure)
    }

    private static func connectOne(_ address: Resolver.Address, deadline: Int64) -> Result<Int32, SSHFailure> {
        let fd = socket(address.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue),
                        address.socketProtocol)
        guard fd >= 0 else {
            return .failure(SSHFailure(.unreachable, phase: .connect, "socket(): \(errorText(errno))"))
        }
        var one: Int32 = 1
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        var result = address.bytes.withUnsafeBytes {
            Glibc.connect(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t($0.count))
        }
        var error = result == 0 ? 0 : errno
        if result != 0 && (error == EINPROGRESS || error == EINTR) {
            while true {
                let remaining = deadline - MonotonicClock.now()
                if remaining <= 0 {
                    Glibc.close(fd)
                    return .failure(SSHFailure(.timeout, phase: .connect, "TCP connect did not complete in time"))
                }
                var pollFD = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                result = poll(&pollFD, 1, Int32(min((remaining + 999_999) / 1_000_000, 60_000)))
                if result < 0 && errno == EINTR { continue }
                if result > 0 { break }
            }
            var socketError: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &socketError, &length)
            error = socketError
        }
        guard error == 0 else {
            Glibc.close(fd)
            switch error {
            case ECONNREFUSED:
                return .failure(SSHFailure(.refused, phase: .connect, "connection refused"))
            case ETIMEDOUT:
                return .failure(SSHFailure(.timeout, phase: .connect, "TCP connect timed out"))
            default:
                return .failure(SSHFailure(.unreachable, phase: .connect, "connect: \(errorText(error))"))
            }
        }
        return .success(fd)
    }

    private init?(fd: Int32) {
        self.fd = fd
        guard let session = libssh2_session_init_ex(nil, nil, nil, nil) else {
            Glibc.close(fd)
            self.fd = -1
            return nil
        }
        self.session = session
        libssh2_session_set_blocking(session, 0)
        // The pin is an ed25519 key's (the one the instance's agent reports); with libssh2's
        // default order an sshd holding ECDSA too would present that one, vouched for by nobody.
        _ = libssh2_session_method_pref(session, LIBSSH2_METHOD_HOSTKEY, HostKeyFingerprint.keyType)
    }

    deinit {
        // A backstop: `close()` is always called explicitly. Without a graceful disconnect this
        // cannot wait on the peer.
        teardown(graceful: false)
    }

    /// Sends a disconnect when the session is established, then frees the session and closes the
    /// socket. Never waits on the peer: the socket is shut down before libssh2 frees its
    /// channels, so their close messages fail at once instead of waiting for a reply. Idempotent.
    func close() {
        teardown(graceful: true)
    }

    private func teardown(graceful: Bool) {
        if let session {
            if graceful && handshaken {
                // One packet; give up rather than wait if the socket cannot take it now.
                _ = libssh2_session_disconnect_ex(session, SSH_DISCONNECT_BY_APPLICATION, "verification done", "")
            }
            if fd >= 0 { shutdown(fd, Int32(SHUT_RDWR)) }
            var rounds = 0
            while libssh2_session_free(session) == LIBSSH2_ERROR_EAGAIN, rounds < 100 {
                rounds += 1
            }
            self.session = nil
        }
        if fd >= 0 {
            Glibc.close(fd)
            fd = -1
        }
    }

    // MARK: Handshake and host key

    enum Step<T> {
        case done(T)
        case failed(code: Int32)
        case deadline
    }

    /// Runs `call` until it no longer answers EAGAIN, polling the socket in between.
    private func drive<T>(_ deadline: Int64, _ call: () -> T, isAgain: (T) -> Bool) -> T? {
        while true {
            let value = call()
            if !isAgain(value) { return value }
            guard waitForSocket(deadline) else { return nil }
        }
    }

    /// Waits until the socket is ready in the directions libssh2 is blocked on; false at the deadline.
    private func waitForSocket(_ deadline: Int64) -> Bool {
        guard let session else { return false }
        let directions = libssh2_session_block_directions(session)
        var events: Int16 = 0
        if directions & LIBSSH2_SESSION_BLOCK_INBOUND != 0 { events |= Int16(POLLIN) }
        if directions & LIBSSH2_SESSION_BLOCK_OUTBOUND != 0 { events |= Int16(POLLOUT) }
        if events == 0 { events = Int16(POLLIN) }
        while true {
            let remaining = deadline - MonotonicClock.now()
            if remaining <= 0 { return false }
            var pollFD = pollfd(fd: fd, events: events, revents: 0)
            let result = poll(&pollFD, 1, Int32(min((remaining + 999_999) / 1_000_000, 60_000)))
            if result > 0 {
                quickAck()
                return true
            }
            if result < 0 && errno != EINTR { return true }  // let libssh2 see the socket error
        }
    }

    /// Acknowledges what arrives at once instead of after the delayed-ACK timer (40 ms). sshd
    /// leaves Nagle on for sessions without a terminal, so it holds its second small packet until
    /// our ACK of the first: without this the command phase stalls ~40 ms. Linux drops out of
    /// quick-ACK mode by itself, so it is re-armed before every read.
    private func quickAck() {
        #if os(Linux)
        var one: Int32 = 1
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_QUICKACK, &one, socklen_t(MemoryLayout<Int32>.size))
        #endif
    }

    var lastError: (code: Int32, message: String) {
        guard let session else { return (0, "no session") }
        var message: UnsafeMutablePointer<CChar>?
        var length: Int32 = 0
        let code = libssh2_session_last_error(session, &message, &length, 0)
        return (code, message.map { String(cString: $0) } ?? "")
    }

    /// Key exchange. On success, returns the host key's SHA-256 fingerprint.
    func handshake(deadline: Int64) -> Result<String, SSHFailure> {
        guard let session else { return .failure(SSHFailure(.handshakeFailed, phase: .handshake, "session closed")) }
        let rc = drive(deadline, { libssh2_session_handshake(session, fd) }, isAgain: { $0 == LIBSSH2_ERROR_EAGAIN })
        remoteBanner = libssh2_session_banner_get(session).map { String(cString: $0) }
        guard let rc else {
            return .failure(remoteBanner == nil
                ? SSHFailure(.noBanner, phase: .handshake, "connected, but no SSH banner arrived in time")
                : SSHFailure(.timeout, phase: .handshake, "key exchange did not finish in time"))
        }
        guard rc == 0 else {
            let (code, message) = lastError
            if remoteBanner == nil {
                return .failure(SSHFailure(.noBanner, phase: .handshake,
                                           "the connection closed before an SSH banner (\(code): \(message))"))
            }
            return .failure(SSHFailure(.handshakeFailed, phase: .handshake, "key exchange failed (\(code): \(message))"))
        }
        handshaken = true
        guard let hash = libssh2_hostkey_hash(session, LIBSSH2_HOSTKEY_HASH_SHA256) else {
            return .failure(SSHFailure(.handshakeFailed, phase: .handshake, "no SHA-256 host key hash available"))
        }
        let digest = hash.withMemoryRebound(to: UInt8.self, capacity: 32) { Array(UnsafeBufferPointer(start: $0, count: 32)) }
        return .success(HostKeyFingerprint.sha256(digest: digest))
    }

    /// The server's host key as a known_hosts key (`TYPE BASE64`), after the handshake: the wire
    /// blob starts with the key type's name.
    func hostKeyLine() -> String? {
        guard let session, handshaken else { return nil }
        var length = 0
        var type: Int32 = 0
        guard let key = libssh2_session_hostkey(session, &length, &type), length > 4 else { return nil }
        let blob = key.withMemoryRebound(to: UInt8.self, capacity: length) { Array(UnsafeBufferPointer(start: $0, count: length)) }
        let nameLength = Int(blob[0]) << 24 | Int(blob[1]) << 16 | Int(blob[2]) << 8 | Int(blob[3])
        guard nameLength > 0, 4 + nameLength <= blob.count else { return nil }
        let name = String(decoding: blob[4..<(4 + nameLength)], as: UTF8.self)
        return "\(name) \(HostKeyFingerprint.base64(blob, padding: true))"
    }

    // MARK: Authentication

    func authenticate(username: String, credentials: SSHCredentials, deadline: Int64) -> Result<Void, SSHFailure> {
        guard let session else { return .failure(SSHFailure(.authRefused, phase: .auth, "session closed")) }
        let userLength = username.utf8.count
        let rc: Int32? = username.withCString { user in
            withOptionalCString(credentials.passphrase) { passphrase in
                switch credentials.privateKey {
                case .file(let path):
                    return path.withCString { keyPath in
                        drive(deadline, {
                            libssh2_userauth_publickey_fromfile_ex(session, user, UInt32(userLength), nil, keyPath, passphrase)
                        }, isAgain: { $0 == LIBSSH2_ERROR_EAGAIN })
                    }
                case .memory(let bytes):
                    return bytes.withUnsafeBufferPointer { key in
                        key.withMemoryRebound(to: CChar.self) { keyChars in
                            drive(deadline, {
                                libssh2_userauth_publickey_frommemory(session, user, userLength, nil, 0,
                                                                      keyChars.baseAddress, keyChars.count, passphrase)
                            }, isAgain: { $0 == LIBSSH2_ERROR_EAGAIN })
                        }
                    }
                }
            }
        }
        guard let rc else { return .failure(SSHFailure(.timeout, phase: .auth, "authentication did not finish in time")) }
        switch rc {
        case 0:
            return .success(())
        case LIBSSH2_ERROR_AUTHENTICATION_FAILED, LIBSSH2_ERROR_PUBLICKEY_UNVERIFIED:
            return .failure(SSHFailure(.authRefused, phase: .auth, "the server refused our key for \(username)"))
        case LIBSSH2_ERROR_SOCKET_DISCONNECT, LIBSSH2_ERROR_SOCKET_RECV, LIBSSH2_ERROR_SOCKET_SEND:
            let (_, message) = lastError
            return .failure(SSHFailure(.authRefused, phase: .auth,
                                       "the server closed the connection during authentication (\(rc): \(message))"))
        default:
            // Everything else happens here, before the server sees a signature: a missing or
            // unreadable file, a wrong passphrase, a format libssh2 cannot parse (it says
            // LIBSSH2_ERROR_FILE, _PROTO, _KEYFILE_AUTH_FAILED or _METHOD_NOT_SUPPORTED).
            let (_, message) = lastError
            return .failure(SSHFailure(.keyUnusable, phase: .auth, "cannot use our private key (\(rc): \(message))"))
        }
    }

    // MARK: Running the command

    struct CommandOutput {
        var stdout: [UInt8]
        var stderr: [UInt8]
        var exitStatus: Int32?
    }

    /// Opens a session channel, runs `command`, reads stdout and stderr to EOF (each capped at
    /// `limit` bytes), and frees the channel on every path.
    func run(_ command: String, deadline: Int64, limit: Int = 65_536) -> Result<CommandOutput, SSHFailure> {
        guard let session else { return .failure(SSHFailure(.commandFailed, phase: .command, "session closed")) }
        let sessionType = "session"
        // LIBSSH2_CHANNEL_WINDOW_DEFAULT and _PACKET_DEFAULT (expression macros Swift does not import).
        let channelWindow: UInt32 = 2 * 1024 * 1024
        let channelPacket: UInt32 = 32_768
        let opened: OpaquePointer?? = drive(deadline, {
            libssh2_channel_open_ex(session, sessionType, UInt32(sessionType.utf8.count), channelWindow,
                                    channelPacket, nil, 0)
        }, isAgain: { $0 == nil && libssh2_session_last_errno(session) == LIBSSH2_ERROR_EAGAIN })
        guard let opened else { return .failure(SSHFailure(.timeout, phase: .command, "opening a channel did not finish in time")) }
        guard let channel = opened else {
            let (code, message) = lastError
            return .failure(SSHFailure(.commandFailed, phase: .command, "cannot open a session channel (\(code): \(message))"))
        }
        defer { freeChannel(channel, deadline: deadline) }

        let request = "exec"
        let started: Int32? = command.withCString { text in
            drive(deadline, {
                libssh2_channel_process_startup(channel, request, UInt32(request.utf8.count), text, UInt32(command.utf8.count))
            }, isAgain: { $0 == LIBSSH2_ERROR_EAGAIN })
        }
        guard let started else { return .failure(SSHFailure(.timeout, phase: .command, "the exec request did not finish in time")) }
        guard started == 0 else {
            let (code, message) = lastError
            return .failure(SSHFailure(.commandFailed, phase: .command, "the server refused the exec request (\(code): \(message))"))
        }

        var output = CommandOutput(stdout: [], stderr: [], exitStatus: nil)
        var buffer = [UInt8](repeating: 0, count: 16_384)
        while true {
            var progressed = false
            for stream: Int32 in [0, SSH_EXTENDED_DATA_STDERR] {
                while true {
                    // Checked on every pass: a peer that streams faster than we read never lets
                    // a read answer EAGAIN, and would otherwise hold this thread past the deadline.
                    guard MonotonicClock.now() < deadline else {
                        return .failure(SSHFailure(.timeout, phase: .command, "the command did not finish in time"))
                    }
                    let count = buffer.withUnsafeMutableBufferPointer { pointer in
                        pointer.withMemoryRebound(to: CChar.self) { libssh2_channel_read_ex(channel, stream, $0.baseAddress, $0.count) }
                    }
                    if count > 0 {
                        progressed = true
                        if stream == 0 {
                            output.stdout += buffer[0..<min(count, max(0, limit - output.stdout.count))]
                        } else {
                            output.stderr += buffer[0..<min(count, max(0, limit - output.stderr.count))]
                        }
                        continue
                    }
                    if count == 0 || count == Int(LIBSSH2_ERROR_EAGAIN) { break }
                    let (code, message) = lastError
                    return .failure(SSHFailure(.commandFailed, phase: .command, "reading the command's output failed (\(code): \(message))"))
                }
            }
            if libssh2_channel_eof(channel) == 1 { break }
            if !progressed {
                guard waitForSocket(deadline) else {
                    return .failure(SSHFailure(.timeout, phase: .command, "the command did not finish in time"))
                }
            }
        }
        // Whatever the remote sent after EOF (exit-status comes first) is already buffered.
        let status = libssh2_channel_get_exit_status(channel)
        output.exitStatus = status
        return .success(output)
    }

    /// Closes and frees a channel. Closing waits for the peer's close (sshd sends it right after
    /// EOF), for at most 100 ms and never past `deadline`; if it does not come, the socket is shut
    /// down so that the free completes at once (the session is unusable afterwards).
    private func freeChannel(_ channel: OpaquePointer, deadline: Int64) {
        let grace = min(deadline, MonotonicClock.now() + 100_000_000)
        if drive(grace, { libssh2_channel_free(channel) }, isAgain: { $0 == LIBSSH2_ERROR_EAGAIN }) != nil { return }
        if fd >= 0 { shutdown(fd, Int32(SHUT_RDWR)) }
        var rounds = 0
        while libssh2_channel_free(channel) == LIBSSH2_ERROR_EAGAIN, rounds < 100 {
            rounds += 1
        }
    }
}

private func withOptionalCString<R>(_ text: String?, _ body: (UnsafePointer<CChar>?) -> R) -> R {
    guard let text else { return body(nil) }
    return text.withCString { body($0) }
}

func errorText(_ code: Int32) -> String {
    String(cString: strerror(code)) + " (errno \(code))"
}
