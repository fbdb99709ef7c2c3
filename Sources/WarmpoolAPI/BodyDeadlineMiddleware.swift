import Hummingbird

/// Reads every request's body, up to `RequestInput.maximumBodyBytes`, within `timeout` of the
/// handler being reached, before any route sees it. The server's idle timeout closes a connection
/// that goes silent, but a client that drips a byte every few seconds is never idle: without a
/// deadline of its own it held a request (and the task serving it) for as long as it liked.
/// Routes then read the body already in hand.
struct BodyDeadlineMiddleware: RouterMiddleware {
    typealias Context = APIRequestContext
    let timeout: Duration

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var request = request
        let timeout = self.timeout
        let unread = request
        let body: ByteBuffer = try await withThrowingTaskGroup(of: ByteBuffer?.self) { group in
            group.addTask {
                var reading = unread
                do {
                    return try await reading.collectBody(upTo: RequestInput.maximumBodyBytes)
                } catch is CancellationError {
                    return nil
                } catch {
                    if Task.isCancelled { return nil }
                    throw APIError(.contentTooLarge, "body_too_large", "the request body exceeds \(RequestInput.maximumBodyBytes) bytes")
                }
            }
            group.addTask {
                try await Task.sleep(for: timeout)
                return nil
            }
            defer { group.cancelAll() }
            guard let first = try await group.next(), let body = first else {
                throw APIError(.requestTimeout, "body_timeout",
                               "the request body did not arrive within \(timeout.components.seconds) s")
            }
            return body
        }
        request.body = .init(buffer: body)
        return try await next(request, context)
    }
}
