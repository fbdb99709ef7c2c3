import Foundation
import Testing
import WarmpoolJSON

/// The status page in a real browser against the real controller, the emulator and real agents:
/// log in, see the pool, follow a failover as it happens, change a setting, read it on a phone.
@Suite(.serialized) struct StatusPageTests {
    /// Where the pool page's screenshot during a failover goes; the README shows the one kept in
    /// Protocol/ (WARMPOOL_SCREENSHOT_DIR=Protocol makes a new one).
    private var screenshotDirectory: String? { ProcessInfo.processInfo.environment["WARMPOOL_SCREENSHOT_DIR"] }

    @Test func anOperatorLogsInSeesThePoolFollowsAFailoverAndChangesASetting() throws {
        // A standby that boots for 4 s keeps the failover on screen long enough to watch.
        let lab = try WarmPoolLab(bootDelayMilliseconds: 4000)
        try lab.startController()
        let provisioned = try lab.provision()["status"] ?? [:]
        let primary = provisioned["primary_gpu_id"]?.intValue ?? -1
        let standby = provisioned["standby_gpu_id"]?.intValue ?? -1
        try lab.harness.waitUntil("the pool is protected", timeout: 60) { (try? lab.status()["protected"]?.boolValue) == true }
        let site = "http://\(lab.harness.apiAddress)"
        let admin = try lab.adminKey()
        let reader = try http("POST", "\(site)/api/v1/keys", key: admin, body: #"{"name": "dashboard", "scope": "read"}"#).json["key"]?.stringValue ?? ""
        #expect(reader.hasPrefix("wp_"))

        let browser = try HeadlessBrowser(directory: lab.harness.directory)
        // Not logged in: the page asks for a key, and a wrong one is refused with a reason.
        try browser.navigate(site + "/ui/pools/12")
        try browser.waitFor("the login form", "location.pathname === '/ui/login' && document.querySelector('#api_key')")
        try browser.type("#api_key", "wp_00000000_" + String(repeating: "0", count: 48))
        try browser.click("#login")
        try browser.waitFor("the refusal", "document.body.innerText.includes('not a valid API key')")

        // A read key sees everything and may change nothing.
        try browser.type("#api_key", reader)
        try browser.click("#login")
        try browser.waitFor("the pool page after login", "location.pathname === '/ui/pools/12' && document.querySelector('#live')")
        #expect(try browser.text("body").contains("Changing them needs an admin key"))
        #expect(try browser.evaluate("document.querySelector('#settings') === null").boolValue == true)
        let cookies = try browser.cookies()
        let session = cookies.first { $0["name"]?.stringValue == "warmpool_session" }
        #expect(session?["httpOnly"]?.boolValue == true && session?["sameSite"]?.stringValue == "Strict", "\(cookies)")
        #expect(try browser.evaluate("document.cookie").stringValue == "", "the page's script cannot read the session")
        try browser.click("button.link")
        try browser.waitFor("the login form after logout", "location.pathname === '/ui/login'")

        // The admin logs in at the list: the product page's fields for the pool.
        try browser.navigate(site + "/ui")
        try browser.type("#api_key", admin)
        try browser.click("#login")
        try browser.waitFor("the pool's card", "document.querySelector('article.pool[data-machine=\"12\"]')")
        let card = try browser.text("article.pool[data-machine=\"12\"]")
        for expected in ["Machine 12", "Active", "protected", "#\(primary)", "#\(standby)", "stopped", "alive", "GPU warm pool", "Failovers\n0"] {
            #expect(card.contains(expected), "the card lacks \(expected): \(card)")
        }
        #expect(card.contains("#\(provisioned["volume_id"]?.intValue ?? -1)"), "\(card)")
        try browser.waitFor("the cost per month", "/\\$\\d/.test(document.querySelector('article.pool[data-machine=\"12\"]').innerText)")

        try browser.click("article.pool[data-machine=\"12\"] h2 a")
        try browser.waitFor("the pool page", "location.pathname === '/ui/pools/12'")
        try browser.waitFor("the costs table", "document.body.innerText.includes('Running primary')")
        let page = try browser.text("#live")
        for expected in ["PrimaryHeartbeating", "StandbyReady", "Agents", "primary", "held", "No failovers yet", "No failover", "CPU standby"] {
            #expect(page.contains(expected), "the pool page lacks \(expected)")
        }

        // A failover, followed on the open page: it shows in progress, then done, with its steps.
        #expect(try lab.sim("POST", "/admin/instances/\(primary)/crash").status == 200)
        try browser.waitFor("the failover in progress", "document.querySelector('article.failover .badge.info')", timeout: 30)
        if let directory = screenshotDirectory {
            try browser.waitFor("a few steps drawn", "document.querySelectorAll('article.failover g.step:not(.running)').length >= 5", timeout: 20)
            try browser.emulateDesktop(width: 1100, height: 1250)
            try browser.screenshot(to: directory + "/status-page-failover.png")
            try browser.emulateDesktop()
        }
        #expect(try browser.text("#live").contains("in_progress"))
        try browser.waitFor("the failover to succeed", "document.querySelector('article.failover .badge.ok') && document.body.innerText.includes('Active')",
                            timeout: 60)
        _ = try lab.waitForFailover(1)
        // The page and the API, read until they agree: a step recorded between two reads is fine.
        var apiSteps: [String] = [], drawn: [String] = []
        try? lab.harness.waitUntil("the page to draw the API's timeline", timeout: 20) {
            apiSteps = ((try? lab.history().first?["timeline"]?.arrayValue) ?? []).compactMap { $0["step"]?.stringValue }
            drawn = (try? browser.evaluate(
                "Array.from(document.querySelectorAll('article.failover g.step')).map(g => g.getAttribute('data-step'))"))?
                .arrayValue?.compactMap(\.stringValue) ?? []
            return !apiSteps.isEmpty && drawn == apiSteps
        }
        #expect(!apiSteps.isEmpty && drawn == apiSteps, "the page draws the API's timeline: \(drawn) vs \(apiSteps)")
        let widths = try browser.evaluate("Array.from(document.querySelectorAll('article.failover g.step rect')).map(r => Number(r.getAttribute('width')))")
        #expect((widths.arrayValue ?? []).allSatisfy { ($0.doubleValue ?? 0) >= 2 && ($0.doubleValue ?? 999) <= 381 }, "\(widths)")
        let facts = try browser.text("#live")
        #expect(facts.contains("#\(standby)"), "the promoted standby is the primary: \(facts)")
        #expect(try browser.evaluate("Number(document.querySelector('.facts .big').innerText)").intValue == 1)

        // A setting changed through the form lands in the API.
        try browser.type("#gpu_preferences", "RTX_4090, A100")
        try browser.click("#save")
        try browser.waitFor("the saved notice", "document.body.innerText.includes('Settings saved.')")
        let settings = try http("GET", "\(lab.api)/settings/12", key: admin).json
        #expect(settings["gpu_preferences"]?.arrayValue?.compactMap(\.stringValue) == ["RTX_4090", "A100"], "\(settings)")
        #expect(settings["strategy"]?.stringValue == "gpu_warm_pool", "an untouched field is not sent as a change")

        // On a phone: nothing wider than the screen, the pool still there.
        try browser.emulatePhone()
        for path in ["/ui", "/ui/pools/12"] {
            try browser.navigate(site + path)
            try browser.waitFor("\(path) on a phone", "document.querySelector('#live') && document.documentElement.scrollWidth <= window.innerWidth")
            if let directory = screenshotDirectory {
                try browser.screenshot(to: directory + "/status-page-phone\(path.replacingOccurrences(of: "/", with: "-")).png")
            }
        }
        #expect(try browser.text("#live").contains("Machine 12"))
    }

    @Test func formsRefuseForgeriesAndTheAPIKeepsItsKeys() throws {
        let lab = try WarmPoolLab()
        try lab.startController()
        _ = try lab.provision()
        let site = "http://\(lab.harness.apiAddress)"
        let admin = try lab.adminKey()
        // The page needs a session: without one it sends a browser to the login form.
        let anonymous = try http("GET", site + "/ui/pools/12", key: nil)
        #expect(anonymous.text.contains("id=\"api_key\""), "followed to the login form: \(anonymous.text.prefix(200))")
        // The API does not take the session cookie, nor the console a bearer key.
        let bearer = try http("GET", site + "/ui/pools/12", key: admin)
        #expect(bearer.text.contains("id=\"api_key\""))

        let browser = try HeadlessBrowser(directory: lab.harness.directory)
        try browser.navigate(site + "/ui/login")
        try browser.type("#api_key", admin)
        try browser.click("#login")
        try browser.waitFor("the pool list", "document.querySelector('article.pool')")
        let cookie = try browser.cookies().first { $0["name"]?.stringValue == "warmpool_session" }?["value"]?.stringValue ?? ""
        try browser.navigate(site + "/ui/pools/12")
        let csrf = try browser.evaluate("document.querySelector('#settings input[name=csrf]').value").stringValue ?? ""
        #expect(csrf.count == 64)
        let api = try http("GET", "\(lab.api)/pools", key: nil, headers: ["Cookie": "warmpool_session=\(cookie)"])
        #expect(api.status == 401, "the session cookie is not an API credential")

        func post(_ body: String, origin: String? = nil) throws -> HTTPAnswer {
            var headers = ["Cookie": "warmpool_session=\(cookie)", "Content-Type": "application/x-www-form-urlencoded"]
            if let origin { headers["Origin"] = origin }
            return try http("POST", site + "/ui/pools/12/settings", key: nil, body: body, headers: headers)
        }
        #expect(try post("gpu_preferences=A100").status == 403, "no CSRF token")
        #expect(try post("csrf=\(String(repeating: "0", count: 64))&gpu_preferences=A100").status == 403, "a wrong CSRF token")
        #expect(try post("csrf=\(csrf)&gpu_preferences=A100", origin: "http://evil.example").status == 403, "another site's form")
        #expect(try http("GET", "\(lab.api)/settings/12", key: admin).json["gpu_preferences"]?.arrayValue == [], "nothing changed")
        let bad = try post("csrf=\(csrf)&volume_size_gb=0", origin: site)
        #expect(bad.status == 400 && bad.text.contains("volume size must be a whole number"), "\(bad.status) \(bad.text.prefix(300))")
        // The engine's own refusal reaches the page, with its reason.
        let refused = try post("csrf=\(csrf)&volume_size_gb=200", origin: site)
        #expect(refused.status == 409 && refused.text.contains("cannot be resized in place"), "\(refused.status)")
        let good = try post("csrf=\(csrf)&gpu_preferences=A100&volume_size_gb=100", origin: site)
        #expect(good.status == 200 && good.text.contains("Settings saved."), "\(good.status)")
        #expect(try http("GET", "\(lab.api)/settings/12", key: admin).json["gpu_preferences"]?.arrayValue == ["A100"])

        // A revoked key ends its browser sessions at the next page.
        let keys = try http("GET", "\(site)/api/v1/keys", key: admin).json["keys"]?.arrayValue ?? []
        let spare = try http("POST", "\(site)/api/v1/keys", key: admin, body: #"{"name": "spare", "scope": "admin"}"#).json
        #expect(spare["key"]?.stringValue != nil)
        let adminID = keys.first?["id"]?.stringValue ?? ""
        #expect(try http("DELETE", "\(site)/api/v1/keys/\(adminID)", key: spare["key"]?.stringValue).status == 200)
        try browser.navigate(site + "/ui/pools/12")
        try browser.waitFor("the login form once the key is revoked", "location.pathname === '/ui/login'")

        // The OpenAPI document is served as it is in Protocol/.
        let document = try http("GET", site + "/openapi.yaml", key: nil)
        let file = try String(contentsOfFile: try OpenAPIDocument.locate(), encoding: .utf8)
        #expect(document.status == 200 && document.contentType?.hasPrefix("application/yaml") == true)
        #expect(document.text == file)
    }
}
