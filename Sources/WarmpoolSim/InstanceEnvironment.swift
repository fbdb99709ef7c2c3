import Foundation

/// The environment an instance's processes start with: what Vast.ai gives every instance, and
/// nothing more (Protocol/VASTAI-SIM.md, "What an instance is given"; the test
/// `anInstanceIsGivenWhatVastAIGivesAndNothingMore` checks the names against that document).
///
/// - Vast.ai's predefined variables (docs.vast.ai, "Docker Execution Environment", Predefined
///   Variables and Port Variables): `CONTAINER_ID`, `VAST_CONTAINERLABEL`, `CONTAINER_API_KEY`,
///   `PUBLIC_IPADDR`, `VAST_TCP_PORT_22`, `SSH_PUBLIC_KEY`, `GPU_COUNT`, `DATA_DIRECTORY`.
///   The emulator maps no port but 22, so there is no other `VAST_TCP_PORT_<n>` and no
///   `VAST_UDP_PORT_<n>`. The Jupyter variables and `PYTORCH_VERSION` belong to the Jupyter
///   launch mode and to images, neither of which the emulator has.
/// - The request's `env` (the user's variables), over the predefined ones, as a later `-e`
///   overrides an earlier one (the docs list `DATA_DIRECTORY` as one a user sets with `-e`).
///   Keys that are not variable names (`-p 8080:8080`, `-v ...`, `-h`) are docker options, not
///   variables.
/// - `PATH` and `HOME`, which every process has (a container gets them from its image).
enum InstanceEnvironment {
    /// What a process is started with besides the variables above.
    static let path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    /// The predefined names, in the docs' order.
    static let predefinedNames = [
        "CONTAINER_ID", "VAST_CONTAINERLABEL", "CONTAINER_API_KEY", "PUBLIC_IPADDR", "VAST_TCP_PORT_22", "SSH_PUBLIC_KEY",
        "GPU_COUNT", "DATA_DIRECTORY",
    ]

    /// Vast.ai documents `DATA_DIRECTORY` as "default location for data copy operations" without
    /// a value. A guess: `/workspace/`, the value Vast.ai's own templates pass (`-e
    /// DATA_DIRECTORY=/workspace/`) and its base image sets (`ENV DATA_DIRECTORY=/workspace`).
    static let dataDirectory = "/workspace/"

    static func make(instance: SimInstance, sshPublicKey: String) -> [String: String] {
        var environment = [
            "PATH": path, "HOME": instance.home,
            "CONTAINER_ID": String(instance.id),
            "VAST_CONTAINERLABEL": "C.\(instance.id)",
            "CONTAINER_API_KEY": instance.apiKey,
            // PUBLIC_IPADDR is "set at instance startup": each boot reads the address again.
            "PUBLIC_IPADDR": instance.sshAddress,
            "VAST_TCP_PORT_22": String(instance.sshPort),
            "SSH_PUBLIC_KEY": sshPublicKey,
            "GPU_COUNT": String(instance.gpuCount),
            "DATA_DIRECTORY": dataDirectory,
        ]
        for (key, value) in instance.env where InstanceFiles.isEnvironmentName(key) { environment[key] = value }
        return environment
    }

    /// The account's SSH key as Vast.ai hands it over: the first key of the authorized keys
    /// file, or "" when it holds none (a guess: the docs do not say what an account without a
    /// key gets).
    static func firstKey(inAuthorizedKeys path: String) -> String {
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        return text.split(whereSeparator: \.isNewline).lazy.map { $0.trimmingCharacters(in: .whitespaces) }
            .first { !$0.isEmpty && !$0.hasPrefix("#") } ?? ""
    }

    /// A per-instance API key: 64 hex digits, as Vast.ai's keys look.
    static func newAPIKey() -> String {
        var generator = SystemRandomNumberGenerator()
        return (0..<4).map { _ in
            let word = String(generator.next() as UInt64, radix: 16)
            return String(repeating: "0", count: 16 - word.count) + word
        }.joined()
    }
}
