//! The dispatch center's page: server-rendered HTML. The live part is rendered here, once per
//! change, and pushed over SSE as an HTML fragment; the page's little script swaps it in and turns
//! button clicks into calls to the JSON API. No JS build step, no client-side templates.

use std::fmt::Write;

use crate::snapshot::Snapshot;

/// Escape text for HTML.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The live part of the page: nodes, cities, heroes, events.
pub fn live(s: &Snapshot) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<section><h2>Nodes</h2><table><thead><tr><th>node</th><th>status</th><th>heroes</th>\
         <th>city</th><th>page</th><th></th></tr></thead><tbody>"
    );
    for n in &s.nodes {
        let name = esc(&n.name);
        let me = if n.name == s.me { " (this node)" } else { "" };
        let link = match &n.http {
            Some(u) => format!("<a href=\"{0}\">{0}</a>", esc(u)),
            None => String::new(),
        };
        let buttons = if n.status == "up" {
            format!(
                "<button data-action=\"POST\" data-url=\"/api/nodes/{name}/stop\" \
                 data-confirm=\"Stop {name} gracefully?\">stop</button> \
                 <button class=\"danger\" data-action=\"POST\" data-url=\"/api/nodes/{name}/crash\" \
                 data-confirm=\"Crash {name}?\">crash</button>"
            )
        } else {
            String::new()
        };
        let _ = write!(
            h,
            "<tr data-node=\"{name}\" data-status=\"{st}\"><td>{name}{me}</td>\
             <td><span class=\"badge {st}\">{st}</span></td><td>{heroes}</td><td>{city}</td>\
             <td>{link}</td><td>{buttons}</td></tr>",
            st = n.status,
            heroes = n.heroes,
            city = esc(n.city.as_deref().unwrap_or("")),
        );
    }
    let _ = write!(
        h,
        "</tbody></table></section><section><h2>Cities</h2><table><thead><tr><th>city</th>\
         <th>node</th><th>heroes</th><th>status</th><th></th></tr></thead><tbody>"
    );
    for c in &s.cities {
        let bomb = if c.status == "ok" {
            format!(
                "<button class=\"danger\" data-action=\"POST\" data-url=\"/api/nodes/{}/bomb\">\
                 bomb the city</button>",
                esc(&c.node)
            )
        } else {
            String::new()
        };
        let _ = write!(
            h,
            "<tr data-city=\"{name}\"><td>{name}</td><td>{node}</td><td>{heroes}</td>\
             <td><span class=\"badge {cls}\">{st}</span></td><td>{bomb}</td></tr>",
            name = esc(&c.name),
            node = esc(&c.node),
            heroes = c.heroes,
            st = c.status,
            cls = c.status.replace(' ', "-"),
        );
    }
    let _ = write!(
        h,
        "</tbody></table></section><section><h2>Superheroes ({})</h2><table><thead><tr>\
         <th>hero</th><th>node</th><th>city</th><th>health</th><th>won</th><th>lost</th>\
         <th>status</th><th></th></tr></thead><tbody>",
        s.heroes.len()
    );
    if s.heroes.is_empty() {
        h.push_str(
            "<tr><td colspan=\"8\" class=\"muted\">No superheroes yet: create one above.</td></tr>",
        );
    }
    for r in &s.heroes {
        let name = esc(&r.name);
        let mut assign = String::new();
        for c in &s.cities {
            if r.city.as_deref() != Some(&c.name) && c.status == "ok" {
                let _ = write!(
                    assign,
                    "<button data-action=\"POST\" data-url=\"/api/heroes/{name}/assign\" \
                     data-body='{{\"city\":\"{city}\"}}'>&rarr; {city}</button> ",
                    city = esc(&c.name)
                );
            }
        }
        let _ = write!(
            h,
            "<tr data-hero=\"{name}\" data-node=\"{node}\" data-health=\"{hp}\" data-won=\"{won}\" \
             data-lost=\"{lost}\" data-status=\"{st}\"><td><b>{name}</b></td><td>{node}</td>\
             <td>{city}</td><td><meter min=\"0\" max=\"100\" low=\"30\" high=\"70\" optimum=\"100\" \
             value=\"{hp}\"></meter> {hp}</td><td>{won}</td><td>{lost}</td>\
             <td><span class=\"badge {st}\">{st}</span></td><td>{assign}<button class=\"danger\" \
             data-action=\"DELETE\" data-url=\"/api/heroes/{name}\">terminate</button></td></tr>",
            node = esc(&r.node),
            hp = r.health,
            won = r.fights_won,
            lost = r.fights_lost,
            st = r.status,
            city = esc(r.city.as_deref().unwrap_or("")),
        );
    }
    h.push_str(
        "</tbody></table></section><section><h2>Events on this node</h2><pre class=\"log\">",
    );
    for e in &s.events {
        h.push_str(&esc(e));
        h.push('\n');
    }
    h.push_str("</pre></section>");
    h
}

/// The whole page, with the live part as of `s`.
pub fn page(s: &Snapshot, live_html: &str) -> String {
    PAGE.replace("{{ME}}", &esc(&s.me))
        .replace("{{CITY}}", &esc(&s.city))
        .replace("{{LIVE}}", live_html)
}

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{CITY}} dispatch center ({{ME}})</title>
<style>
  body { font: 15px/1.4 system-ui, sans-serif; margin: 0; background: #f5f6f8; color: #1d2330; }
  header { background: #1d2330; color: #fff; padding: 14px 24px; display: flex; align-items: center; gap: 16px; }
  header h1 { font-size: 20px; margin: 0; }
  #conn { margin-left: auto; font-size: 13px; }
  main { padding: 8px 24px 40px; max-width: 1100px; }
  section { background: #fff; border-radius: 8px; padding: 8px 16px 12px; margin: 14px 0; box-shadow: 0 1px 2px #0002; }
  h2 { font-size: 16px; margin: 8px 0; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid #eee; }
  th { font-weight: 600; color: #556; font-size: 13px; }
  .badge { border-radius: 10px; padding: 1px 8px; font-size: 12px; background: #dde; }
  .up, .ok, .patrolling { background: #cfeed6; } .resting { background: #d8e6fb; }
  .leaving, .moving { background: #fde9b8; } .down, .in-ruins { background: #f7c9c9; }
  button { cursor: pointer; border: 1px solid #99a; background: #fff; border-radius: 5px; padding: 2px 8px; margin: 1px; }
  button.danger { border-color: #c55; color: #a22; }
  input { padding: 4px 8px; border: 1px solid #99a; border-radius: 5px; }
  .muted { color: #889; } .log { max-height: 240px; overflow: auto; font-size: 12px; margin: 0; }
  #msg { margin-left: 12px; color: #a22; }
</style>
</head>
<body>
<header><h1>{{CITY}} dispatch center</h1><span>node <b>{{ME}}</b></span><span id="conn">connecting…</span></header>
<main>
<section>
  <h2>Create a superhero</h2>
  <form id="create"><input id="hero-name" name="name" placeholder="name, e.g. Batman" maxlength="32" required>
  <button type="submit">create</button><span id="msg"></span></form>
</section>
<div id="live">{{LIVE}}</div>
</main>
<script>
const msg = t => { document.getElementById('msg').textContent = t || ''; };
const conn = document.getElementById('conn');
async function api(method, url, body) {
  const r = await fetch(url, { method, headers: body ? {'content-type': 'application/json'} : {}, body });
  if (!r.ok) { const t = await r.text(); msg(r.status + ': ' + t); } else { msg(''); }
  return r;
}
document.getElementById('create').addEventListener('submit', async e => {
  e.preventDefault();
  const input = document.getElementById('hero-name');
  const r = await api('POST', '/api/heroes', JSON.stringify({ name: input.value.trim() }));
  if (r.ok) input.value = '';
});
document.addEventListener('click', e => {
  const b = e.target.closest('button[data-action]');
  if (!b) return;
  if (b.dataset.confirm && !window.confirm(b.dataset.confirm)) return;
  api(b.dataset.action, b.dataset.url, b.dataset.body);
});
function connect() {
  const es = new EventSource('/events');
  es.addEventListener('view', e => { document.getElementById('live').innerHTML = e.data; });
  es.onopen = () => { conn.textContent = '● live'; };
  es.onerror = () => { conn.textContent = '○ reconnecting… (this node may be down; try another node)'; };
}
connect();
</script>
</body>
</html>
"#;
