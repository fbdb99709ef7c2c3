import Foundation
import Testing
import WarmpoolStorage
@testable import WarmpoolSnapshot

/// Which locks hold, on the store's clock: the one decision the locks protocol makes.
@Suite struct LockTableTests {
    let t0 = Date(timeIntervalSince1970: 1_796_387_400)
    let own = "locks/prune-20261204T123000.000Z-own"

    func lock(_ key: String, _ age: Double?) -> S3Object {
        S3Object(key: key, size: 40, lastModified: age.map { t0.addingTimeInterval(-$0) })
    }

    @Test func agesAreMeasuredAgainstOurOwnLockOnTheStoresClock() {
        let listing = [
            lock(own, 0),
            lock("locks/create-20261204T122800.000Z-a", 119),
            lock("locks/create-20261204T122700.000Z-b", 121),
            lock("locks/prune-20261204T122000.000Z-c", 600),
        ]
        // Our own clock is an hour ahead: it does not matter, the store's times are compared.
        let creates = LockTable.assess(listing, kind: .create, own: own, staleAfter: .seconds(120), now: t0.addingTimeInterval(3_600))
        #expect(creates == .init(fresh: ["locks/create-20261204T122800.000Z-a"], stale: ["locks/create-20261204T122700.000Z-b"]))
        let prunes = LockTable.assess(listing, kind: .prune, own: own, staleAfter: .seconds(120), now: t0)
        #expect(prunes == .init(fresh: [], stale: ["locks/prune-20261204T122000.000Z-c"]), "our own lock is never another's")
    }

    /// A store that lists no times: the time in the key, against our clock.
    @Test func withoutTimesTheKeysTimeIsUsed() {
        let listing = [lock(own, nil), lock("locks/create-20261204T122900.000Z-a", nil), lock("locks/create-20261204T120000.000Z-b", nil),
                       lock("locks/create-garbage", nil)]
        let creates = LockTable.assess(listing, kind: .create, own: own, staleAfter: .seconds(120), now: t0)
        #expect(creates.fresh == ["locks/create-20261204T122900.000Z-a", "locks/create-garbage"], "an undatable lock holds")
        #expect(creates.stale == ["locks/create-20261204T120000.000Z-b"])
    }

    @Test func otherObjectsUnderLocksAreNotLocks() {
        let listing = [lock(own, 0), lock("locks/readme", 5), lock("locks/creates-x", 5)]
        #expect(LockTable.assess(listing, kind: .create, own: own, staleAfter: .seconds(120), now: t0) == .init(fresh: [], stale: []))
    }
}

/// The create pipeline's bookkeeping, alone.
@Suite struct ChunkPipelineTests {
    @Test func slotsKeepTheReadOrderWhateverOrderTheTasksReportIn() {
        var pipeline = ChunkPipeline(limit: 3)
        let slots = (0..<3).map { _ in pipeline.reserve() }
        #expect(pipeline.isFull && slots == [0, 1, 2])
        pipeline.record(.init(slot: 2, id: "c", uploadedBytes: 10))
        #expect(!pipeline.isFull)
        _ = pipeline.reserve()
        pipeline.record(.init(slot: 0, id: "a", uploadedBytes: nil))
        pipeline.record(.init(slot: 3, id: "a", uploadedBytes: nil))
        pipeline.record(.init(slot: 1, id: "b", uploadedBytes: 7))
        #expect(pipeline.ids == ["a", "b", "c", "a"] && pipeline.outstanding == 0)
        #expect(pipeline.newChunks == 2 && pipeline.uploadedBytes == 17)
    }

    @Test func anIdIsClaimedOnce() {
        let known = KnownChunks(["old"])
        #expect(!known.claim("old"))
        #expect(known.claim("new"))
        #expect(!known.claim("new"))
    }
}
