"""The one JSON-over-HTTP helper, with a Bearer key: the controller's REST API and the emulator's."""
import json
import urllib.error
import urllib.request


class HTTPError(RuntimeError):
    def __init__(self, method, url, status, text):
        super().__init__("%s %s: HTTP %d %s" % (method, url, status, text))
        self.status = status


def call(method, url, key=None, body=None, timeout=30):
    """(status, parsed JSON or text); an HTTP error status is an answer, not an exception."""
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method)
    if key:
        request.add_header("Authorization", "Bearer " + key)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            status, text = answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode(errors="replace")
    try:
        return status, json.loads(text or "{}")
    except ValueError:
        return status, text


def request(method, url, key=None, body=None, timeout=120):
    """The parsed answer; raises HTTPError unless the status is 2xx."""
    status, answer = call(method, url, key, body, timeout)
    if not 200 <= status < 300:
        raise HTTPError(method, url, status, answer if isinstance(answer, str) else json.dumps(answer))
    return answer
