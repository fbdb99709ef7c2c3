import Testing
import WarmpoolModel

@testable import WarmpoolLiveness

@Suite struct LeaseAuthorityTests {
    let controllerEpoch = Epoch(7)

    @Test func anInstanceNoPoolClaimsIsGrantedAtTheControllersEpochThroughAnyFailure() {
        var leases = LeaseAuthority(controllerEpoch: controllerEpoch)
        #expect(leases.grantEpoch(forLiveAgentOn: 41) == controllerEpoch)
        leases.agentFailed(on: 41)
        #expect(leases.posture(of: 41) == nil, "nothing to hold: no failover can be under way for it")
        #expect(leases.grantEpoch(forLiveAgentOn: 41) == controllerEpoch, "so it never flaps failed/recovered")
        #expect(!leases.isWithheld(41))
    }

    @Test func aFailureHoldsAGrantedInstanceUntilTheEngineRules() {
        var leases = LeaseAuthority(controllerEpoch: controllerEpoch)
        leases.grant(12, epoch: 3)
        #expect(leases.grantEpoch(forLiveAgentOn: 12) == 3, "the pool's epoch, not the controller's")
        leases.agentFailed(on: 12)
        #expect(leases.posture(of: 12) == .held(epoch: 3))
        #expect(leases.grantEpoch(forLiveAgentOn: 12) == nil, "a recovery alone grants nothing")
        #expect(leases.isWithheld(12))
        leases.releaseHold(12)
        #expect(leases.grantEpoch(forLiveAgentOn: 12) == 3, "no failover began: the same epoch again")
        #expect(!leases.isWithheld(12))
    }

    @Test func aRevocationOutlastsFailuresAndReleases() {
        var leases = LeaseAuthority(controllerEpoch: controllerEpoch)
        leases.grant(12, epoch: 3)
        leases.agentFailed(on: 12)
        leases.revoke(12)
        leases.agentFailed(on: 12)
        leases.releaseHold(12)
        #expect(leases.posture(of: 12) == .revoked)
        #expect(leases.grantEpoch(forLiveAgentOn: 12) == nil)
        leases.grant(12, epoch: 4)
        #expect(leases.grantEpoch(forLiveAgentOn: 12) == 4, "the engine's grant is the only way back")
    }

    @Test func instancesAreIndependent() {
        var leases = LeaseAuthority(controllerEpoch: controllerEpoch)
        leases.grant(12, epoch: 3)
        leases.grant(13, epoch: 5)
        leases.agentFailed(on: 12)
        #expect(leases.grantEpoch(forLiveAgentOn: 13) == 5)
        #expect(leases.posture(of: 12)?.epoch == 3)
    }
}
