import Testing
import WarmpoolAgent

/// The agent's hand-written command line (CommandLineOptions.swift): the forms
/// swift-argument-parser accepted, and usage errors for everything else.
@Suite struct CommandLineTests {
    static let options = [
        CommandLineOption(name: "controller", valueName: "controller", help: "Controller.", repeatable: true),
        CommandLineOption(name: "agent-id", valueName: "agent-id", help: "The id."),
        CommandLineOption(name: "connections", valueName: "connections", help: "Sessions."),
        CommandLineOption(name: "probe-once", help: "Probe and exit."),
    ]

    func parse(_ arguments: String...) throws(UsageError) -> ParsedCommandLine {
        try ParsedCommandLine(arguments, options: Self.options)
    }

    @Test func valuesFlagsAndRepeats() throws {
        let parsed = try parse("--controller", "a:1", "--controller=b:2", "--agent-id", "gpu-1", "--connections=3", "--probe-once")
        #expect(parsed.strings("controller") == ["a:1", "b:2"])
        #expect(parsed.string("agent-id") == "gpu-1")
        #expect(try parsed.integer("connections", as: Int.self) == 3)
        #expect(parsed.flag("probe-once"))
        #expect(!parsed.wantsHelp)
    }

    @Test func absentOptionsAreNil() throws {
        let parsed = try parse()
        #expect(parsed.string("agent-id") == nil)
        #expect(parsed.strings("controller").isEmpty)
        #expect(try parsed.integer("connections", as: Int.self) == nil)
        #expect(!parsed.flag("probe-once"))
    }

    @Test func theLastOfARepeatedSingleOptionWins() throws {
        #expect(try parse("--agent-id", "a", "--agent-id", "b").string("agent-id") == "b")
    }

    @Test func anEmptyValueAfterEqualsIsAValue() throws {
        #expect(try parse("--agent-id=").string("agent-id") == "")
    }

    @Test func help() throws {
        #expect(try parse("--help").wantsHelp)
        #expect(try parse("--agent-id", "a", "-h").wantsHelp)
        let text = ParsedCommandLine.help(command: "warmpool-agent", abstract: "Beats.", discussion: "More.", options: Self.options)
        #expect(text.hasPrefix("OVERVIEW: Beats."))
        #expect(text.contains("--controller <controller> ..."))
        #expect(text.contains("--probe-once"))
        #expect(text.contains("-h, --help"))
    }

    @Test func version() throws {
        #expect(try parse("--version").wantsVersion)
        #expect(try parse("--agent-id", "a", "--version").wantsVersion)
        #expect(try !parse("--agent-id", "a").wantsVersion)
        // The string itself is WarmpoolVersion.current; OperatorCLITests checks all seven executables agree.
        #expect(!ParsedCommandLine.version.isEmpty)
        let text = ParsedCommandLine.help(command: "warmpool-agent", abstract: "Beats.", discussion: "More.", options: Self.options)
        #expect(text.contains("--version"))
    }

    @Test(arguments: [
        (["--bogus"], "unknown option '--bogus'"),
        (["positional"], "unexpected argument 'positional'"),
        (["-x"], "unexpected argument '-x'"),
        (["--agent-id"], "missing value for '--agent-id'"),
        (["--agent-id", "--probe-once"], "missing value for '--agent-id'"),
        (["--probe-once=yes"], "'--probe-once' takes no value"),
        (["--connections", "two"], "the value 'two' is invalid for '--connections'"),
    ])
    func usageErrors(arguments: [String], message: String) {
        #expect(throws: UsageError(message)) {
            let parsed = try ParsedCommandLine(arguments, options: Self.options)
            _ = try parsed.integer("connections", as: Int.self)
        }
    }
}
