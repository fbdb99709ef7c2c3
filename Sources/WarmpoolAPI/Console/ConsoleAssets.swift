/// The console's stylesheet and its one script, served from memory with the pages. They are
/// separate files rather than inline so the Content-Security-Policy can forbid inline script.
enum ConsoleAssets {
    static let stylesheet = """
        :root{--ok:#1a7f37;--warn:#9a6700;--bad:#cf222e;--info:#0969da;--muted:#6e7781;--line:#d0d7de;--bg:#f6f8fa;--ink:#1f2328}
        *{box-sizing:border-box}
        body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--ink);background:var(--bg)}
        header.top{display:flex;flex-wrap:wrap;gap:.5rem 1rem;align-items:center;justify-content:space-between;padding:.6rem 1rem;background:#24292f;color:#fff}
        header.top a{color:#fff;text-decoration:none}.brand{font-weight:700;font-size:1.1rem}
        nav{display:flex;flex-wrap:wrap;gap:.4rem .9rem;align-items:center}.who{color:#c9d1d9;font-size:.85rem;overflow-wrap:anywhere}
        main{max-width:1200px;margin:0 auto;padding:1rem}
        h1{font-size:1.4rem;margin:.2rem 0 .6rem}h2{font-size:1.1rem;margin:1.2rem 0 .5rem}h3{font-size:1rem;margin:.2rem 0 .4rem}
        .card h2{margin-top:.1rem}
        a{color:var(--info)}code{background:#eaeef2;padding:0 .25rem;border-radius:4px;overflow-wrap:anywhere}
        .card{background:#fff;border:1px solid var(--line);border-radius:8px;padding:.8rem 1rem;margin:0 0 1rem;min-width:0}
        .narrow{max-width:28rem;margin:2rem auto}
        .grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,20rem),1fr));gap:1rem}
        .facts{grid-template-columns:repeat(auto-fill,minmax(min(100%,15rem),1fr))}.facts .card{margin:0}.facts p{margin:.2rem 0}
        .big{font-size:1.6rem;font-weight:700}
        dl{display:grid;grid-template-columns:auto 1fr;gap:.15rem .8rem;margin:0}dt{color:var(--muted)}dd{margin:0;overflow-wrap:anywhere}
        .badge{display:inline-block;padding:0 .45rem;border-radius:1rem;font-size:.78rem;font-weight:600;line-height:1.5rem;color:#fff;background:var(--muted);vertical-align:middle;white-space:nowrap}
        .badge.ok{background:var(--ok)}.badge.warn{background:var(--warn)}.badge.bad{background:var(--bad)}.badge.info{background:var(--info)}
        .reason{font-size:.8rem;color:var(--bad);font-weight:400}
        .muted{color:var(--muted)}.summary{margin:.2rem 0 1rem}
        .error{color:var(--bad);font-weight:600}.notice{color:var(--ok);font-weight:600}
        .scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}
        table{border-collapse:collapse;width:100%;background:#fff;font-size:.9rem}
        th,td{text-align:left;padding:.35rem .5rem;border-bottom:1px solid var(--line);vertical-align:top}
        th{background:var(--bg);font-weight:600;white-space:nowrap}
        tr.total td{font-weight:700}tr.current td{background:#ddf4ff}
        .failover{margin-top:.6rem}
        svg.timeline{width:100%;max-width:600px;height:auto;display:block;font-size:11px}
        svg.timeline text{fill:var(--ink)}svg.timeline text.value{fill:var(--muted)}
        svg.timeline rect{fill:var(--info)}svg.timeline .running rect{fill:none;stroke:var(--info);stroke-dasharray:3 2}
        svg.timeline line.axis{stroke:var(--line)}
        form label{display:block;margin:.6rem 0 .2rem;font-weight:600}
        input,select{width:100%;max-width:28rem;padding:.45rem;font:inherit;border:1px solid var(--line);border-radius:6px;background:#fff}
        button{margin-top:.8rem;padding:.5rem 1rem;font:inherit;font-weight:600;border:0;border-radius:6px;background:var(--ok);color:#fff;cursor:pointer}
        form.inline{display:inline;margin:0}button.link{margin:0;padding:0;background:none;color:#fff;text-decoration:underline;font-weight:400}
        .crumbs{margin:0 0 .4rem;color:var(--muted)}
        @media (max-width:600px){main{padding:.6rem}th,td{padding:.3rem}}
        """

    /// Fetches the page's live part again every second while the tab is visible. A session that
    /// ended (401) reloads the page, which leads to the login form.
    static let script = """
        (function () {
          var live = document.getElementById("live");
          if (!live) return;
          var url = live.getAttribute("data-live"), every = Number(live.getAttribute("data-every")) || 1000;
          var busy = false, last = null;
          function tick() {
            if (busy || document.hidden) return;
            busy = true;
            fetch(url, { credentials: "same-origin", cache: "no-store" }).then(function (response) {
              if (response.status === 401) { location.reload(); return null; }
              return response.ok ? response.text() : null;
            }).then(function (html) {
              if (html !== null && html !== last) { live.innerHTML = html; last = html; }
              live.setAttribute("data-refreshed", String(Date.now()));
            }).catch(function () {}).then(function () { busy = false; });
          }
          setInterval(tick, every);
        })();
        """
}
