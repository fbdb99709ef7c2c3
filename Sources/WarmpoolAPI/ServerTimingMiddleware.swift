import Hummingbird

/// `Server-Timing: app;dur=MS` on every answer: the time the controller spent on the request,
/// from the router to the response, so a benchmark (Scripts/bench api) and a browser's developer
/// tools can tell the server's share from the network's.
struct ServerTimingMiddleware: RouterMiddleware {
    typealias Context = APIRequestContext

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let started = ContinuousClock.now
        var response = try await next(request, context)
        let elapsed = ContinuousClock.now - started
        let milliseconds = Double(elapsed.components.seconds) * 1e3 + Double(elapsed.components.attoseconds) / 1e15
        response.headers[.init("Server-Timing")!] = "app;dur=\((milliseconds * 1000).rounded() / 1000)"
        return response
    }
}
