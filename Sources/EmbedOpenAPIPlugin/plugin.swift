import Foundation
import PackagePlugin

/// Embeds Protocol/openapi.yaml in the target it is applied to, as `OpenAPIDocument.text`: the
/// controller serves the document its tests check it against, byte for byte, with no copy to keep
/// in step.
@main
struct EmbedOpenAPI: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        let input = context.package.directoryURL.appending(path: "Protocol/openapi.yaml")
        let output = context.pluginWorkDirectoryURL.appending(path: "OpenAPIDocument.swift")
        return [
            .buildCommand(
                displayName: "Embedding Protocol/openapi.yaml",
                executable: try context.tool(named: "warmpool-embed").url,
                arguments: [input.path, output.path, "OpenAPIDocument"],
                inputFiles: [input], outputFiles: [output])
        ]
    }
}
