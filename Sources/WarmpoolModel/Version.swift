/// Warmpool's version: the one string every executable's `--version` and the controller's
/// `GET /api/v1/version` print, so an operator comparing a controller, its agents and the CLI in
/// hand reads the same number everywhere. Raised with each release; nothing parses it.
public enum WarmpoolVersion {
    public static let current = "0.23.0"
}
