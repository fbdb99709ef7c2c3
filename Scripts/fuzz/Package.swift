// swift-tools-version:6.0
// A libFuzzer harness for WarmpoolWire: the frame parser, both session state machines, the body
// decoders and zstd. Its own package so that the sanitizer flags never touch the main build.
// Build and run with Scripts/fuzz/run.
import PackageDescription

let package = Package(
    name: "WireFuzzer",
    platforms: [.macOS(.v14)],
    dependencies: [
        .package(name: "warmpool", path: "../.."),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
    ],
    targets: [
        // No main.swift: libFuzzer supplies main() and calls LLVMFuzzerTestOneInput.
        .executableTarget(
            name: "WireFuzzer",
            dependencies: [
                .product(name: "WarmpoolWire", package: "warmpool"),
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
    ]
)
