import GRDB
import WarmpoolModel

// The model's ids and enums are stored as their raw values (the columns are unchanged): GRDB's
// RawRepresentable conformance reads and writes them, in records and in query arguments alike.
extension PoolID: DatabaseValueConvertible {}
extension InstanceID: DatabaseValueConvertible {}
extension HostMachineID: DatabaseValueConvertible {}
extension VolumeID: DatabaseValueConvertible {}
extension Epoch: DatabaseValueConvertible {}
extension AgentID: DatabaseValueConvertible {}
extension PoolState: DatabaseValueConvertible {}
extension StandbyState: DatabaseValueConvertible {}
extension FailoverStrategy: DatabaseValueConvertible {}
