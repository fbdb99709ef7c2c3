import ArgumentParser
import Foundation
import WarmpoolJSON

private let warmpool = "api/v1/warmpool"

struct Snapshots: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "A pool's snapshots in the store, newest first.")
    @OptionGroup var connection: Connection
    @Argument var machineID: Int64

    func run() async throws {
        try await WarmpoolCtl.run {
            let answer = try await connection.client().get("\(warmpool)/snapshots/\(machineID)")
            if connection.json { return Output.json(answer) }
            let snapshots = answer["snapshots"]?.objects ?? []
            if snapshots.isEmpty { return print("no snapshots of machine \(machineID)'s volume") }
            Output.table(["ID", "TAKEN AT", "MANIFEST BYTES"],
                         snapshots.map { [Output.cell($0["id"]), Output.cell($0["taken_at"]), Output.cell($0["manifest_bytes"])] })
        }
    }
}

struct Snapshot: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Snapshot a pool's volume now, on its primary.")
    @OptionGroup var connection: Connection
    @Argument var machineID: Int64

    func run() async throws {
        try await WarmpoolCtl.run {
            let answer = try await connection.client(defaultTimeout: Connection.longOperationTimeout).send("POST", "\(warmpool)/snapshot/\(machineID)", body: [:])
            if connection.json { return Output.json(answer) }
            let summary = answer["snapshot"]?.objectOrEmpty ?? [:]
            print("snapshot \(Output.cell(summary["snapshot"])): \(Output.cell(summary["files"])) files, \(Output.cell(summary["bytes"])) bytes, "
                  + "\(Output.cell(summary["uploaded_bytes"])) uploaded, \(Output.cell(summary["seconds"])) s")
        }
    }
}

struct Restore: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Restore a snapshot onto a new volume: the primary is fenced, a new primary restores it, then a new standby.",
        discussion: "The old volume is kept, untouched, until cleanup.")
    @OptionGroup var connection: Connection
    @Argument var machineID: Int64
    @Option(help: "The snapshot id (see `warmpoolctl snapshots`); the newest when left out.") var snapshot: String?
    @Flag(help: "Confirm: the pool's primary is stopped and its data replaced by the snapshot's.") var yes = false

    func run() async throws {
        guard yes else { throw ValidationError("a restore stops the primary and replaces its data with the snapshot's: add --yes to confirm") }
        try await WarmpoolCtl.run {
            let body: JSONValue = snapshot.map { .object([("snapshot", .string($0))]) } ?? [:]
            let answer = try await connection.client(defaultTimeout: Connection.longOperationTimeout).send("POST", "\(warmpool)/restore/\(machineID)", body: body)
            Output.field("message", of: answer, json: connection.json)
        }
    }
}
