// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "warmpool",
    // Linux only: the agent listener is epoll, the probes read /proc and mount tables, the tests
    // start sshd in network namespaces. SwiftPM has no way to say so; nothing here builds on macOS.
    products: [
        .executable(name: "warmpool-agent", targets: ["warmpool-agent"]),
        .executable(name: "warmpool-controller", targets: ["warmpool-controller"]),
        .executable(name: "warmpool-loadgen", targets: ["warmpool-loadgen"]),
        .executable(name: "warmpool-sshcheck", targets: ["warmpool-sshcheck"]),
        .executable(name: "warmpool-snapshot", targets: ["warmpool-snapshot"]),
        .executable(name: "warmpoolctl", targets: ["warmpoolctl"]),
        .executable(name: "warmpool-sim", targets: ["warmpool-sim"]),
        .library(name: "WarmpoolWire", targets: ["WarmpoolWire"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        // API keys and webhook signatures; the agent does not link it (WarmpoolWire has its own SHA-256).
        .package(url: "https://github.com/apple/swift-crypto", from: "4.5.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        // Header names in tests of the Vast.ai notification receiver (Hummingbird's own types).
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
        // The control plane: the REST API, its embedded store and its metrics. The agent links none of them.
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
    ],
    targets: [
        // System libraries. The Debian -dev packages provide the pkg-config files (Scripts/setup installs them).
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
        .systemLibrary(name: "CEpoll"),
        .systemLibrary(name: "CLibSSH2", pkgConfig: "libssh2", providers: [.apt(["libssh2-1-dev"])]),
        .systemLibrary(name: "CCurl", pkgConfig: "libcurl", providers: [.apt(["libcurl4-openssl-dev"])]),
        // curl_easy_setopt is variadic, which Swift cannot call: this shim gives it typed entry points.
        .target(name: "CCurlShim", dependencies: ["CCurl"]),

        // The leaf: typed identifiers, the shared enums and the one vocabulary for time. No
        // dependencies, no Foundation: the agent links it.
        .target(name: "WarmpoolModel"),
        .testTarget(name: "WarmpoolModelTests", dependencies: ["WarmpoolModel"]),
        // The one JSON toolkit: an ordered value, a strict parser, a streaming writer and the one string
        // escaper. No dependencies, no Foundation: the agent links it. (The emulator keeps its own.)
        .target(
            name: "WarmpoolJSON",
            // Swift on ELF marks every public function SHF_GNU_RETAIN, so --gc-sections keeps all of the
            // toolkit in every binary that links it: the parser, sorting, hashing. The agent uses the
            // streaming writer only. Public functions in their own sections, without the retain flag,
            // let the linker drop the rest (the stripped agent would otherwise grow by 60 KiB).
            swiftSettings: [
                .unsafeFlags(
                    ["-Xfrontend", "-internalize-at-link", "-Xfrontend", "-function-sections"],
                    .when(platforms: [.linux], configuration: .release))
            ]
        ),
        // Foundation only to check it against JSONSerialization and JSONEncoder.
        .testTarget(name: "WarmpoolJSONTests", dependencies: ["WarmpoolJSON"]),

        .target(
            name: "WarmpoolWire",
            dependencies: [
                "WarmpoolModel",
                "CZstd",
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        .target(
            name: "WarmpoolAgent",
            dependencies: [
                "WarmpoolModel",
                "WarmpoolWire",
                "WarmpoolJSON",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .target(
            name: "WarmpoolLiveness",
            dependencies: [
                "WarmpoolModel",
                "WarmpoolWire",
                "WarmpoolJSON",
                "CEpoll",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // SSH readiness and volume verification over libssh2; the blocking calls run on a NIOThreadPool.
        .target(
            name: "WarmpoolSSH",
            dependencies: [
                "WarmpoolModel",
                "CLibSSH2",
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "warmpool-agent",
            // No swift-argument-parser: it imports FoundationEssentials (CommandLineOptions.swift).
            dependencies: [
                "WarmpoolAgent",
                "WarmpoolWire",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            // --static-swift-stdlib links with -export-dynamic, which puts every public symbol of the
            // package modules (~17,000) in the dynamic symbol table of an executable nothing links
            // against, and keeps them from --gc-sections. Safe identical code folding (no function
            // whose address is taken) merges identical specialisations. 2.2 MiB off the stripped
            // binary; fewer pages of symbol tables and code resident (Scripts/bench agent footprint).
            linkerSettings: [
                .unsafeFlags(["-Xlinker", "--no-export-dynamic", "-Xlinker", "--icf=safe"], .when(platforms: [.linux], configuration: .release))
            ]
        ),
        .executableTarget(
            name: "warmpool-controller",
            dependencies: [
                "WarmpoolModel",
                "WarmpoolWire",
                "WarmpoolLiveness",
                "WarmpoolAPI",
                "WarmpoolStore",
                "WarmpoolFailover",
                "WarmpoolEngine",
                "WarmpoolProvider",
                "WarmpoolSSH",
                "WarmpoolNotify",
                "WarmpoolHTTP",
                "WarmpoolStorage",
                "WarmpoolJSON",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // Opens many agent sessions from one process: the soak and capacity benchmarks' load.
        .executableTarget(
            name: "warmpool-loadgen",
            dependencies: [
                "WarmpoolModel",
                "WarmpoolAgent",
                "CEpoll",
                "WarmpoolWire",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),

        // Durable state: pools, agents and their keys, pins, failover timelines, the outbox, API keys.
        .target(
            name: "WarmpoolStore",
            dependencies: [
                "WarmpoolModel",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The REST API (Hummingbird) over the store and the liveness hub, and the Prometheus metrics.
        .target(
            name: "WarmpoolAPI",
            dependencies: [
                "WarmpoolModel",
                // Vast.ai's notification webhooks are signed like ours (WebhookSignature).
                "WarmpoolNotify",
                "WarmpoolJSON",
                "WarmpoolStore",
                "WarmpoolLiveness",
                "WarmpoolProvider",
                "WarmpoolWire",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            // GET /openapi.yaml serves Protocol/openapi.yaml, compiled in.
            plugins: ["EmbedOpenAPIPlugin"]
        ),
        .executableTarget(name: "warmpool-embed"),
        .plugin(name: "EmbedOpenAPIPlugin", capability: .buildTool(), dependencies: ["warmpool-embed"], path: "Sources/EmbedOpenAPIPlugin"),
        // The operator CLI: speaks only the REST API.
        .executableTarget(
            name: "warmpoolctl",
            dependencies: ["WarmpoolJSON", "WarmpoolModel", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        // What --follow and the progress of long commands print from successive polls.
        .testTarget(name: "WarmpoolCtlTests", dependencies: ["warmpoolctl", "WarmpoolJSON"]),

        // Thin command line over WarmpoolSSH, used by `Scripts/bench ssh`.
        .executableTarget(
            name: "warmpool-sshcheck",
            dependencies: [
                "WarmpoolModel",
                "WarmpoolSSH",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),

        // Shared by the test targets: running commands, tmpfs volumes.
        .target(
            name: "WarmpoolTestSupport",
            dependencies: ["WarmpoolWire", .product(name: "NIOCore", package: "swift-nio")],
            path: "Tests/WarmpoolTestSupport"),
        .testTarget(name: "SystemLibraryTests", dependencies: ["CZstd", "CLibSSH2", "CCurl", "CCurlShim"]),
        // Crypto only to check the wire's own SHA-256 and HMAC against swift-crypto.
        .testTarget(
            name: "WarmpoolWireTests",
            dependencies: [
                "WarmpoolWire",
                "WarmpoolModel",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "WarmpoolAgentTests",
            dependencies: [
                "WarmpoolAgent", "WarmpoolTestSupport", "WarmpoolWire", .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        // Unit tests of the pure parts, and the verifier against a real sshd on loopback (as root).
        .testTarget(
            name: "WarmpoolSSHTests",
            dependencies: [
                "WarmpoolModel",
                "WarmpoolSSH",
                "WarmpoolTestSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "WarmpoolLivenessTests",
            dependencies: [
                "WarmpoolLiveness",
                "WarmpoolJSON",
                "WarmpoolTestSupport",
                "WarmpoolModel",
                "WarmpoolWire",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "WarmpoolStoreTests",
            dependencies: [
                "WarmpoolStore",
                "WarmpoolModel",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "WarmpoolAPITests",
            dependencies: [
                "WarmpoolAPI",
                "WarmpoolJSON",
                "WarmpoolModel",
                "WarmpoolProvider",
                "WarmpoolStore",
                "WarmpoolTestSupport",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Starts the real binaries; speaks the wire protocol and HTTP to them, and seeds or reads their store.
        .testTarget(
            name: "EndToEndTests",
            dependencies: [
                "WarmpoolWire",
                "WarmpoolTestSupport",
                "WarmpoolStore",
                "WarmpoolModel",
                // The live API test checks answers against Protocol/openapi.yaml; every test reads JSON with it.
                "WarmpoolJSON",
                // Signs Vast.ai notifications the way Vast.ai does (the same scheme as our webhooks).
                "WarmpoolNotify",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),

        // The provider client and its emulator.
        // The Vast.ai client over libcurl: blocking transfers run on a NIOThreadPool.
        .target(
            name: "WarmpoolProvider",
            dependencies: [
                "WarmpoolModel",
                "WarmpoolHTTP",
                "WarmpoolJSON",
                // Signs the GCE service account's JWT (RS256).
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // A local Vast.ai stand-in that runs real instances (sshd + onstart) on loopback.
        .target(
            name: "WarmpoolSim",
            dependencies: [
                // Vast.ai's notification webhooks: sent over libcurl, signed with HMAC-SHA256.
                "WarmpoolHTTP",
                .product(name: "Crypto", package: "swift-crypto"),
                // The emulated Compute Engine's service account: RSA keys, JWT signatures checked.
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        .executableTarget(
            name: "warmpool-sim",
            dependencies: [
                "WarmpoolSim",
                "WarmpoolModel",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "WarmpoolProviderTests",
            dependencies: [
                "WarmpoolModel",
                "WarmpoolProvider",
                // Checks the GCE JWT's signature with the service account's public key.
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        // The client, the project's SSH verifier and the official vastai CLI against the emulator.
        .testTarget(
            name: "WarmpoolSimTests",
            dependencies: [
                "WarmpoolModel",
                "WarmpoolSim",
                "WarmpoolProvider",
                "WarmpoolSSH",
                "WarmpoolTestSupport",
                .product(name: "Crypto", package: "swift-crypto"),
                // Signs a JWT with a key the emulated GCE service account does not have.
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),

        // The failover engine (pure): the per-pool state machine, no I/O, no clock, no dependencies.
        .target(name: "WarmpoolEngine", dependencies: ["WarmpoolModel"]),
        .testTarget(name: "WarmpoolEngineTests", dependencies: ["WarmpoolEngine", "WarmpoolModel"]),
        // Its shell: liveness events, provider answers, SSH verdicts and timers in; store commits,
        // provider commands, verifications and lease decisions out.
        .target(
            name: "WarmpoolFailover",
            dependencies: [
                "WarmpoolModel", "WarmpoolEngine", "WarmpoolProvider", "WarmpoolSSH", "WarmpoolStore", "WarmpoolNotify",
                "WarmpoolLiveness", "WarmpoolWire", "WarmpoolJSON",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                // Ed25519 key pairs for the primaries' syncs to their CPU standbys (SyncKeys).
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),

        // The pure transition recorder and the effect runner's bookkeeping.
        .testTarget(
            name: "WarmpoolFailoverTests",
            dependencies: ["WarmpoolFailover", "WarmpoolEngine", "WarmpoolModel", "WarmpoolStore", "WarmpoolSSH", "WarmpoolProvider"]
        ),

        // The generic libcurl HTTP client: the provider client and the webhook notifier share it.
        .target(
            name: "WarmpoolHTTP",
            dependencies: [
                "WarmpoolModel",
                "CCurl",
                "CCurlShim",
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        // Delivers the store's outbox as signed webhooks, with backoff, from a ServiceLifecycle service.
        .target(
            name: "WarmpoolNotify",
            dependencies: [
                "WarmpoolModel",
                "WarmpoolJSON",
                "WarmpoolHTTP",
                "WarmpoolStore",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // The snapshot format: content-defined chunks, named by a keyed hash, compressed, sealed.
        .target(
            name: "WarmpoolSnapshot",
            dependencies: [
                // zstd contexts reused chunk after chunk (the wire's stateless calls make one per call).
                "CZstd",
                "WarmpoolModel",
                "WarmpoolWire",
                "WarmpoolStorage",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // Snapshots of /data, run beside the agent (never inside it: it links libcurl).
        .executableTarget(
            name: "warmpool-snapshot",
            dependencies: [
                "WarmpoolSnapshot",
                "WarmpoolModel",
                "WarmpoolStorage",
                "WarmpoolHTTP",
                // A thread pool sized to --parallel: each transfer blocks one of its threads.
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // The pure parts alone, and the repository (prune beside a create, parallel transfers)
        // against a real S3 server (moto).
        .testTarget(
            name: "WarmpoolSnapshotTests",
            dependencies: [
                "WarmpoolSnapshot", "WarmpoolModel", "WarmpoolWire", "WarmpoolStorage", "WarmpoolHTTP", "WarmpoolTestSupport",
                .product(name: "Crypto", package: "swift-crypto"), .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // S3-compatible object storage over the shared libcurl client: SigV4, multipart, retries.
        .target(
            name: "WarmpoolStorage",
            dependencies: [
                "WarmpoolHTTP",
                "WarmpoolModel",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // SigV4 against AWS's documented examples and botocore's signer; the client against a real
        // S3 server (moto, verifying signatures), read and written by boto3 too.
        .testTarget(
            name: "WarmpoolStorageTests",
            dependencies: [
                "WarmpoolStorage",
                "WarmpoolHTTP",
                "WarmpoolTestSupport",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The pure parts alone, and the notifier against real receivers on loopback and a real SQLite file.
        .testTarget(
            name: "WarmpoolNotifyTests",
            dependencies: [
                "WarmpoolNotify",
                "WarmpoolStore",
                "WarmpoolModel",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
    ]
)
