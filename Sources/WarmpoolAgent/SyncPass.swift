#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import WarmpoolJSON
import WarmpoolModel

/// What a pass needs besides its target: where the volume is and where the agent keeps the key
/// files `SyncTargetFile` wrote.
struct SyncSetup: Sendable {
    var volumePath: String
    var identityPath: String
    var knownHostsPath: String
    /// A directory of the agent's own for the manifest it uploads.
    var manifestDirectory: String
    /// The manifest's `source`: which agent wrote the copy.
    var source: String
    var instanceID: UInt64
    var rsync = "rsync"
    var ssh = "ssh"
    /// Subtracted from a pass's start for the pending walk: a write in the same instant as rsync's
    /// scan of that directory may or may not be in the copy, and mtime granularity is coarse on
    /// some filesystems.
    var pendingSlackNanoseconds: Int64 = 1_000_000_000
}

/// One pass of the sync on a thread of its own: rsync the volume to the target, then the manifest
/// (rsync writes it to a temporary name and renames it), then walk the volume for what changed
/// since the pass began. Every child is the leader of its own process group (rsync's ssh joins
/// it), so `cancel` kills the whole pass, ssh included, and nothing after it starts.
final class SyncPass: Sendable {
    let pass: Int
    private struct Children {
        var cancelled = false
        var group: pid_t?
    }
    private let children = Mutex(Children())

    private init(pass: Int) {
        self.pass = pass
    }

    /// `finished` is called once, on the pass's thread, with this pass, unless it was cancelled.
    static func start(
        pass: Int, target: SyncTarget, epoch: UInt64, setup: SyncSetup,
        finished: @escaping @Sendable (SyncPass, SyncSchedule.Outcome) -> Void
    ) -> SyncPass {
        let run = SyncPass(pass: pass)
        ReaperThread.detach {
            let outcome = run.run(target: target, epoch: epoch, setup: setup)
            if !run.isCancelled { finished(run, outcome) }
        }
        return run
    }

    func cancel() {
        children.withLock { children in
            children.cancelled = true
            if let group = children.group { _ = kill(-group, SIGKILL) }
        }
    }

    /// The process group of the child running now, for the log.
    var group: pid_t? { children.withLock { $0.group } }

    private var isCancelled: Bool { children.withLock { $0.cancelled } }

    static func sshCommand(target: SyncTarget, setup: SyncSetup) -> String {
        // rsync splits -e at spaces and honours single quotes: each path is one quoted word.
        [
            setup.ssh, "-F", "/dev/null", "-i", quoted(setup.identityPath), "-o", "IdentitiesOnly=yes",
            quoted("-oUserKnownHostsFile=" + setup.knownHostsPath), "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
            // A VM that stops answering fails the pass in ~15 s instead of hanging it.
            "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3", "-p", "\(target.port)",
        ].joined(separator: " ")
    }

    private static func quoted(_ word: String) -> String {
        "'" + word.replacingAll("'", with: "'\\''") + "'"
    }

    static func rsyncArguments(target: SyncTarget, setup: SyncSetup) -> [String] {
        var arguments = [
            setup.rsync, "-a", "--delete", "--exclude=/.warmpool/", "--exclude=/.warmpool-sync/",
            "--exclude=/\(VolumeProbe.probeDirectoryName)/", "--stats",
        ]
        if target.bandwidthLimitKiB > 0 { arguments.append("--bwlimit=\(target.bandwidthLimitKiB)") }
        arguments += ["-e", sshCommand(target: target, setup: setup), setup.volumePath + "/", target.destination]
        return arguments
    }

    private func run(target: SyncTarget, epoch: UInt64, setup: SyncSetup) -> SyncSchedule.Outcome {
        let clock = SystemWallClock()
        let startedAt = clock.now().nanosecondsSinceEpoch
        let copy = spawnAndWait(Self.rsyncArguments(target: target, setup: setup))
        guard case .success(let (status, output)) = copy else {
            if case .failure(let reason) = copy { return .failed(reason.description) }
            return .failed("rsync did not run")
        }
        // 24: files vanished while rsync ran. The workload is live; they are in the next pass's walk.
        guard status == 0 || status == 24 else { return .failed(Self.failure("rsync", status: status, output: output)) }
        let statistics = RsyncStatistics(output)
        let finishedAt = clock.now().nanosecondsSinceEpoch
        let manifestFile = setup.manifestDirectory + "/manifest.json"
        var manifest = JSONWriter()
        manifest.object { o in
            o.field("bytes", statistics.totalBytes ?? 0)
            o.field("epoch", epoch)
            o.field("files", statistics.files ?? 0)
            o.field("finished_at_ms", finishedAt / 1_000_000)
            o.field("instance_id", setup.instanceID)
            o.field("pass", pass)
            o.field("source", setup.source)
            o.field("started_at_ms", startedAt / 1_000_000)
        }
        if let problem = SyncTargetFile.writePrivate(String(decoding: manifest.bytes, as: UTF8.self) + "\n", to: manifestFile) {
            return .failed("manifest: \(problem)")
        }
        // The directory's contents, not the file: rsync makes the last level of the destination
        // itself (a fresh target has no .warmpool-sync yet), and only manifest.json is in it.
        let upload = [
            setup.rsync, "-a", "-e", Self.sshCommand(target: target, setup: setup), setup.manifestDirectory + "/",
            target.destination + ".warmpool-sync/",
        ]
        let uploaded = spawnAndWait(upload)
        guard case .success(let (manifestStatus, manifestOutput)) = uploaded else {
            if case .failure(let reason) = uploaded { return .failed("manifest: \(reason.description)") }
            return .failed("manifest upload did not run")
        }
        guard manifestStatus == 0 else { return .failed(Self.failure("manifest upload", status: manifestStatus, output: manifestOutput)) }
        let pending = SyncPendingWalk(root: setup.volumePath).walk(since: startedAt - setup.pendingSlackNanoseconds)
        return .succeeded(SyncSchedule.PassResult(
            startedAtWallMilliseconds: startedAt / 1_000_000, finishedAtWallMilliseconds: finishedAt / 1_000_000,
            files: statistics.files ?? 0, bytes: statistics.totalBytes ?? 0, sentBytes: statistics.sentBytes,
            pendingFiles: pending.files, pendingBytes: pending.bytes, pendingTruncated: pending.truncated))
    }

    /// The exit status and the last line rsync or ssh printed that is not statistics: the reason,
    /// in their words ("Host key verification failed.", "connection unexpectedly closed").
    static func failure(_ what: String, status: Int32, output: [UInt8]) -> String {
        let lines = String(decoding: output, as: UTF8.self).split(whereSeparator: \.isNewline).map { String($0).trimmingWhitespace() }
        let said = lines.last { line in
            !line.isEmpty && !line.hasPrefix("rsync error:") && !line.hasPrefix("rsync: connection unexpectedly closed")
        } ?? lines.last { !$0.isEmpty }
        // 128 + a signal number is how `exitStatus` reports a kill; ssh's own failure is 255.
        let how = (129...192).contains(status) ? "killed by signal \(status - 128)" : "exit status \(status)"
        return "\(what) \(how)" + (said.map { ": \($0)" } ?? "")
    }

    /// Runs `arguments` as a group leader with its output (both streams) captured, and waits.
    /// The spawn and the record of the group happen under the lock `cancel` takes, so a cancel
    /// either prevents the child or kills it.
    private func spawnAndWait(_ arguments: [String]) -> Result<(Int32, [UInt8]), PassFailure> {
        var pipeEnds: [Int32] = [-1, -1]
        guard pipe(&pipeEnds) == 0 else { return .failure("pipe: \(String(cString: strerror(errno)))") }
        // Neither end may leak into a workload started meanwhile; dup2 gives the child its own.
        for end in pipeEnds { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        let spawned: Result<pid_t, SpawnError>? = children.withLock { children in
            guard !children.cancelled else { return nil }
            // Standard input from /dev/null: ssh must never wait for a password.
            let result = spawnGroupLeader(arguments, environment: [], standardOutput: pipeEnds[1], standardErrorToo: true, noInput: true)
            if case .success(let pid) = result { children.group = pid }
            return result
        }
        close(pipeEnds[1])
        guard let spawned else {
            close(pipeEnds[0])
            return .failure("cancelled")
        }
        guard case .success(let pid) = spawned else {
            close(pipeEnds[0])
            if case .failure(let error) = spawned { return .failure("\(error)") }
            return .failure("cannot start \(arguments[0])")
        }
        let output = readTail(pipeEnds[0], limit: 64 << 10)
        close(pipeEnds[0])
        var raw: Int32 = 0
        while waitpid(pid, &raw, 0) < 0, errno == EINTR {}
        children.withLock { $0.group = nil }
        return .success((exitStatus(waitStatus: raw), output))
    }
}

/// Why a child of the pass did not run.
struct PassFailure: Error, CustomStringConvertible, ExpressibleByStringInterpolation {
    var description: String
    init(stringLiteral value: String) { description = value }
}

/// What rsync's `--stats` says of a pass. Numbers are printed with thousands separators.
struct RsyncStatistics: Equatable, Sendable {
    /// Regular files in the source.
    var files: Int64?
    var totalBytes: Int64?
    var sentBytes: Int64?

    init(files: Int64? = nil, totalBytes: Int64? = nil, sentBytes: Int64? = nil) {
        self.files = files
        self.totalBytes = totalBytes
        self.sentBytes = sentBytes
    }

    init(_ output: [UInt8]) {
        self.init()
        for line in String(decoding: output, as: UTF8.self).split(whereSeparator: \.isNewline) {
            if line.hasPrefix("Number of files:") {
                // "Number of files: 1,234 (reg: 1,000, dir: 234)"
                if let open = line.firstIndex(of: "("), line[open...].hasPrefix("(reg: ") {
                    files = Self.number(line[open...].dropFirst("(reg: ".count))
                } else {
                    files = Self.number(line.dropFirst("Number of files:".count))
                }
            } else if line.hasPrefix("Total file size:") {
                totalBytes = Self.number(line.dropFirst("Total file size:".count))
            } else if line.hasPrefix("Total bytes sent:") {
                sentBytes = Self.number(line.dropFirst("Total bytes sent:".count))
            }
        }
    }

    /// The first number in `text`, its separators skipped.
    private static func number(_ text: Substring) -> Int64? {
        var digits = ""
        for character in text.drop(while: { $0 == " " }) {
            if character.isASCII, character.isNumber {
                digits.append(character)
            } else if character != "," && character != "." {
                break
            }
        }
        return Int64(digits)
    }
}

extension String {
    func replacingAll(_ target: Character, with replacement: String) -> String {
        var result = ""
        for character in self { if character == target { result += replacement } else { result.append(character) } }
        return result
    }
}
