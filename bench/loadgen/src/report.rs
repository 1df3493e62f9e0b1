//! Joins the per-server, per-scenario results of a bench run into one JSON document,
//! a markdown table and the `ratios:` line.

use std::{collections::BTreeMap, path::Path};

use serde_json::{Map, Value, json};

/// The servers, in table order.
pub const SERVERS: [&str; 3] = ["chatwire", "nestjs", "ceiling"];

/// Reads every `*.json` result in `dir` (objects with `scenario` and `server`), plus an
/// optional `meta.json` (machine, mode, settings), and builds the report document.
pub fn collect(dir: &Path) -> std::io::Result<Value> {
    let mut results: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut meta = Value::Null;
    let mut notes = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.filter_map(Result::ok).map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            notes.push(format!("{} is not JSON", path.display()));
            continue;
        };
        if path.file_name().and_then(|n| n.to_str()) == Some("meta.json") {
            meta = v;
            continue;
        }
        let (Some(server), Some(scenario)) = (v["server"].as_str(), v["scenario"].as_str()) else {
            notes.push(format!("{} has no server/scenario", path.display()));
            continue;
        };
        results.entry(server.to_owned()).or_default().insert(scenario.to_owned(), v.clone());
    }
    let results = Value::Object(results.into_iter().map(|(k, v)| (k, Value::Object(v))).collect());
    let ratios = ratios(&results);
    let goals = goals(&results);
    Ok(json!({
        "generated_at_unix": crate::sys::now_micros() / 1_000_000,
        "meta": meta,
        "results": results,
        "ratios": ratios,
        "goals": goals,
        "notes": notes,
    }))
}

fn num(v: &Value, pointer: &str) -> Option<f64> {
    v.pointer(pointer).and_then(Value::as_f64)
}

/// A server's saturation throughput: the last clean step under the lag threshold; when
/// even the first step was over it, the most any step delivered (which flatters that
/// server); without a saturation run, the `stream` scenario's.
pub fn saturation_tokens_per_s(results: &Value, server: &str) -> Option<f64> {
    let sat = &results[server]["saturate"];
    if let Some(t) = num(sat, "/saturation/tokens_per_s") {
        return Some(t);
    }
    if let Some(steps) = sat["steps"].as_array() {
        let best = steps.iter().filter_map(|s| num(s, "/tokens_per_s")).fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
        if best.is_some() {
            return best;
        }
    }
    num(&results[server]["stream"], "/tokens_per_s")
}

/// The most frames/s a server delivered cleanly (saturation search, else `stream`).
fn best_frames_per_s(results: &Value, server: &str) -> Option<f64> {
    let from_steps = results[server]["saturate"]["steps"].as_array().and_then(|steps| {
        steps
            .iter()
            .filter(|s| num(s, "/lost_tokens") == Some(0.0) && num(s, "/error_count") == Some(0.0))
            .filter_map(|s| num(s, "/frames_per_s"))
            .reduce(f64::max)
    });
    from_steps.or_else(|| num(&results[server]["stream"], "/frames_per_s"))
}

fn ratio(num: Option<f64>, den: Option<f64>) -> Option<f64> {
    match (num, den) {
        // A measured zero (a TTFT below a microsecond, say) counts as the smallest step.
        (Some(n), Some(d)) => Some(((n / d.max(1e-3)) * 100.0).round() / 100.0),
        _ => None,
    }
}

/// How many times better chatwire is than the NestJS peer (above 1: chatwire wins).
pub fn ratios(results: &Value) -> Value {
    let cw = &results["chatwire"];
    let nest = &results["nestjs"];
    json!({
        "tokens_per_s": ratio(saturation_tokens_per_s(results, "chatwire"), saturation_tokens_per_s(results, "nestjs")),
        "rss_per_conn": ratio(num(nest, "/idle/rss_per_conn_kib"), num(cw, "/idle/rss_per_conn_kib")),
        "lag_p99": ratio(num(nest, "/stream/lag/p99_ms"), num(cw, "/stream/lag/p99_ms")),
        "ttft_p99": ratio(num(nest, "/ttft/ttft_gateway/p99_ms"), num(cw, "/ttft/ttft_gateway/p99_ms")),
        "cpu_per_connect": ratio(num(nest, "/idle/cpu_per_connect_us"), num(cw, "/idle/cpu_per_connect_us")),
        "cpu_per_token": ratio(cpu_per_token(results, "nestjs"), cpu_per_token(results, "chatwire")),
        // The other way round: how many times the ceiling's cost chatwire spends (the
        // goal is at most 1.5).
        "cpu_per_token_over_ceiling": ratio(cpu_per_token(results, "chatwire"), cpu_per_token(results, "ceiling")),
    })
}

/// A server's CPU time per delivered token at the `cpu` scenario's fixed load (µs).
pub fn cpu_per_token(results: &Value, server: &str) -> Option<f64> {
    num(&results[server]["cpu"], "/server_cpu_us_per_token")
}

/// The `cpu` scenario's load as a share of the server's saturation throughput in the
/// same run (percent), when both were measured with the same answer length (the
/// per-answer work shifts the saturation point: a quick run searches with 50-token
/// answers) and the search found the point rather than its client cap.
fn cpu_load_share(results: &Value, server: &str) -> Option<f64> {
    let cpu = &results[server]["cpu"];
    let sat = &results[server]["saturate"];
    if num(cpu, "/tokens_per_answer")? != num(sat, "/tokens_per_answer")? || sat["reached"] != Value::Bool(true) {
        return None;
    }
    let offered = num(cpu, "/offered_tokens_per_s")?;
    let point = num(sat, "/saturation/tokens_per_s")?;
    (point > 0.0).then(|| (offered / point * 1000.0).round() / 10.0)
}

/// The servers whose `cpu` figure was taken while they did not keep up with the load.
fn cpu_overloaded(results: &Value) -> Vec<&'static str> {
    SERVERS.iter().copied().filter(|s| results[*s]["cpu"]["below_saturation"] == Value::Bool(false)).collect()
}

/// The goals, each with the measured values and whether it is met (null when
/// something it needs was not measured).
pub fn goals(results: &Value) -> Value {
    let cw = &results["chatwire"];
    let nest = &results["nestjs"];
    let r = ratios(results);
    let le = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a <= b);
    let ge = |a: Option<f64>, b: f64| a.map(|a| a >= b);
    let lt = |a: Option<f64>, b: f64| a.map(|a| a < b);
    let cw_frames = best_frames_per_s(results, "chatwire");
    let ceiling_frames = best_frames_per_s(results, "ceiling");
    let mut lost_everywhere = Vec::new();
    for server in SERVERS {
        for scenario in ["cpu", "stream", "saturate", "overload"] {
            if let Some(l) = num(&results[server][scenario], "/lost_tokens") {
                lost_everywhere.push(l);
            }
        }
        if let Some(l) = num(&results[server]["storm"], "/streams/lost_tokens") {
            lost_everywhere.push(l);
        }
    }
    let overloaded = cpu_overloaded(results);
    json!([
        {"goal": "CPU per token at the fixed load at least 5x lower than the peer's",
         "chatwire_us": cpu_per_token(results, "chatwire"), "nestjs_us": cpu_per_token(results, "nestjs"),
         "ratio": r["cpu_per_token"], "overloaded": overloaded,
         "met": ge(r["cpu_per_token"].as_f64(), 5.0)},
        {"goal": "CPU per token at the fixed load within 1.5x of the ceiling's",
         "chatwire_us": cpu_per_token(results, "chatwire"), "ceiling_us": cpu_per_token(results, "ceiling"),
         "ratio": r["cpu_per_token_over_ceiling"], "overloaded": overloaded,
         "met": r["cpu_per_token_over_ceiling"].as_f64().map(|x| x <= 1.5)},
        {"goal": "memory per idle connection <= the NestJS peer's",
         "chatwire_kib": num(cw, "/idle/rss_per_conn_kib"), "nestjs_kib": num(nest, "/idle/rss_per_conn_kib"),
         "met": le(num(cw, "/idle/rss_per_conn_kib"), num(nest, "/idle/rss_per_conn_kib"))},
        {"goal": "CPU per connect at least 3x lower than the peer's",
         "ratio": r["cpu_per_connect"], "met": ge(r["cpu_per_connect"].as_f64(), 3.0)},
        {"goal": "saturation tokens/s at least 5x the peer's",
         "ratio": r["tokens_per_s"], "met": ge(r["tokens_per_s"].as_f64(), 5.0)},
        {"goal": "delivered frames/s at least half of the ceiling's",
         "chatwire": cw_frames, "ceiling": ceiling_frames,
         "met": cw_frames.zip(ceiling_frames).map(|(c, x)| c >= x / 2.0)},
        {"goal": "lag p99 under 50 ms in the stream scenario",
         "chatwire_ms": num(cw, "/stream/lag/p99_ms"), "clients": num(cw, "/stream/clients"),
         "met": lt(num(cw, "/stream/lag/p99_ms"), 50.0)},
        {"goal": "gateway TTFT p99 under 5 ms",
         "chatwire_ms": num(cw, "/ttft/ttft_gateway/p99_ms"), "met": lt(num(cw, "/ttft/ttft_gateway/p99_ms"), 5.0)},
        {"goal": "at 2x the saturation: running answers' lag p99 under 100 ms, refusals answered under 10 ms, no lost token",
         "lag_p99_ms": num(cw, "/overload/lag/p99_ms"), "refused": num(cw, "/overload/refused"),
         "refused_p99_ms": num(cw, "/overload/refused_after/p99_ms"), "lost": num(cw, "/overload/lost_tokens"),
         "met": num(cw, "/overload/lag/p99_ms").zip(num(cw, "/overload/lost_tokens"))
             .map(|(l, lost)| l < 100.0 && lost == 0.0 && num(cw, "/overload/refused_after/p99_ms").is_none_or(|r| r == 0.0 || r < 10.0))},
        {"goal": "storm: every client back, zero failed connects, running answers' lag p99 under 250 ms",
         "not_back": num(cw, "/storm/not_back"), "failed_connects": num(cw, "/storm/failed_connects"),
         "lag_p99_ms": num(cw, "/storm/streams/lag/p99_ms"),
         "met": num(cw, "/storm/not_back").zip(num(cw, "/storm/failed_connects")).zip(num(cw, "/storm/streams/lag/p99_ms"))
             .map(|((n, f), l)| n == 0.0 && f == 0.0 && l < 250.0)},
        {"goal": "zero lost tokens everywhere",
         "lost": lost_everywhere.iter().fold(0.0, |a, b| a + b),
         "met": (!lost_everywhere.is_empty()).then(|| lost_everywhere.iter().all(|l| *l == 0.0))},
    ])
}

/// One row of the table: what each server's cell shows.
enum M {
    /// A number at a JSON pointer into the server's results, with these decimals.
    Num(&'static str, usize),
    /// The server's `cpu` figure over the ceiling's.
    OverCeiling,
    /// The `cpu` load as a share of the server's saturation throughput in this run.
    LoadShare,
    /// During the `cpu` window: the machine's busy cores minus the server's, the
    /// upstream's and the load generator's (someone else's work, which skews the figure).
    OtherLoad,
    /// A boolean at a JSON pointer: yes / NO.
    Flag(&'static str),
}

type Row = (&'static str, M);

fn fmt(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(x) => format!("{x:.decimals$}"),
        None => "–".into(),
    }
}

/// The markdown table of a report document.
pub fn table(report: &Value) -> String {
    let results = &report["results"];
    let servers: Vec<&str> = SERVERS.iter().copied().filter(|s| results.get(*s).is_some()).collect();
    let stream_desc = SERVERS
        .iter()
        .find_map(|s| {
            let st = &results[*s]["stream"];
            Some(format!(
                "{} clients × {} tok/s, {} tokens/answer",
                num(st, "/clients")?,
                num(st, "/rate_per_stream")?,
                num(st, "/tokens_per_answer")?
            ))
        })
        .unwrap_or_default();
    let cpu_desc = SERVERS
        .iter()
        .find_map(|s| {
            let c = &results[*s]["cpu"];
            Some(format!(
                "fixed load {} clients × {} tok/s = {} tokens/s offered, {} tokens/answer",
                num(c, "/clients")?,
                num(c, "/rate_per_stream")?,
                num(c, "/offered_tokens_per_s")?,
                num(c, "/tokens_per_answer")?
            ))
        })
        .unwrap_or_default();
    let rows: Vec<(String, Vec<Row>)> = vec![
        (
            format!("cpu ({cpu_desc})"),
            vec![
                ("**server CPU per token (µs)**", M::Num("/cpu/server_cpu_us_per_token", 2)),
                ("× the ceiling's CPU per token", M::OverCeiling),
                ("server CPU (cores)", M::Num("/cpu/server_cpu_cores", 3)),
                ("tokens/s delivered", M::Num("/cpu/tokens_per_s", 0)),
                ("lag p99 (ms)", M::Num("/cpu/lag/p99_ms", 2)),
                ("first token p99 (ms)", M::Num("/cpu/first_token/p99_ms", 2)),
                ("load / this run's saturation (%)", M::LoadShare),
                ("other load on the machine (cores)", M::OtherLoad),
                ("kept up (below saturation)", M::Flag("/cpu/below_saturation")),
                ("lost tokens", M::Num("/cpu/lost_tokens", 0)),
                ("errors", M::Num("/cpu/error_count", 0)),
            ],
        ),
        (
            format!("idle ({} connections)", first(results, "/idle/connections_requested").map_or("–".into(), |v| v.to_string())),
            vec![
                ("connect rate (conn/s)", M::Num("/idle/connect_rate_per_s", 0)),
                ("RSS per connection (KiB)", M::Num("/idle/rss_per_conn_kib", 2)),
                ("CPU per connect (µs)", M::Num("/idle/cpu_per_connect_us", 1)),
                ("connect p99 (ms)", M::Num("/idle/connect_latency/p99_ms", 2)),
                ("failed connects", M::Num("/idle/failed", 0)),
            ],
        ),
        (
            format!(
                "storm ({} idle clients drop at once and reconnect with socket.io-client's backoff, {} answers streaming)",
                first(results, "/storm/connections_requested").map_or("–".into(), |v| v.to_string()),
                first(results, "/storm/streams/clients").map_or("–".into(), |v| v.to_string())
            ),
            vec![
                ("all back after (s)", M::Num("/storm/all_back_seconds", 2)),
                ("not back", M::Num("/storm/not_back", 0)),
                ("failed connects", M::Num("/storm/failed_connects", 0)),
                ("back after p99 (ms)", M::Num("/storm/back_after/p99_ms", 0)),
                ("running answers' lag p99 (ms)", M::Num("/storm/streams/lag/p99_ms", 2)),
                ("first token p99 meanwhile (ms)", M::Num("/storm/streams/first_token/p99_ms", 2)),
                ("lost tokens", M::Num("/storm/streams/lost_tokens", 0)),
            ],
        ),
        (
            format!("stream ({stream_desc})"),
            vec![
                ("tokens/s delivered", M::Num("/stream/tokens_per_s", 0)),
                ("frames/s delivered", M::Num("/stream/frames_per_s", 0)),
                ("lag p50 (ms)", M::Num("/stream/lag/p50_ms", 2)),
                ("lag p99 (ms)", M::Num("/stream/lag/p99_ms", 2)),
                ("lag max (ms)", M::Num("/stream/lag/max_ms", 2)),
                ("first token p99 (ms)", M::Num("/stream/first_token/p99_ms", 2)),
                ("server CPU (cores)", M::Num("/stream/server_cpu_cores", 2)),
                ("server CPU per token (µs)", M::Num("/stream/server_cpu_us_per_token", 2)),
                ("lost tokens", M::Num("/stream/lost_tokens", 0)),
                ("errors", M::Num("/stream/error_count", 0)),
            ],
        ),
        (
            format!(
                "saturation (lag p99 > {} ms, or under {} % of the offered tokens/s delivered)",
                first(results, "/saturate/threshold_ms").map_or("–".into(), |v| v.to_string()),
                first(results, "/saturate/min_delivery").and_then(|v| v.as_f64()).map_or("–".into(), |v| format!("{:.0}", v * 100.0))
            ),
            vec![
                ("clients at saturation", M::Num("/saturate/saturation/clients", 0)),
                ("tokens/s at saturation", M::Num("/saturate/saturation/tokens_per_s", 0)),
                ("frames/s at saturation", M::Num("/saturate/saturation/frames_per_s", 0)),
                ("lag p99 there (ms)", M::Num("/saturate/saturation/lag_p99_ms", 2)),
                ("lost tokens (all steps)", M::Num("/saturate/lost_tokens", 0)),
            ],
        ),
        (
            format!("overload (2 × the saturation: {} clients)", first(results, "/overload/clients").map_or("–".into(), |v| v.to_string())),
            vec![
                ("tokens/s delivered", M::Num("/overload/tokens_per_s", 0)),
                ("running answers' lag p99 (ms)", M::Num("/overload/lag/p99_ms", 2)),
                ("first token p99 (ms)", M::Num("/overload/first_token/p99_ms", 2)),
                ("starts refused as busy", M::Num("/overload/refused", 0)),
                ("refusal answered p99 (ms)", M::Num("/overload/refused_after/p99_ms", 2)),
                ("lost tokens", M::Num("/overload/lost_tokens", 0)),
                ("errors", M::Num("/overload/error_count", 0)),
            ],
        ),
        (
            format!(
                "ttft ({} starts/s, upstream first-token delay {} ms)",
                first(results, "/ttft/rate_per_s").map_or("–".into(), |v| v.to_string()),
                first(results, "/ttft/first_token_delay_ms").map_or("–".into(), |v| v.to_string())
            ),
            vec![
                ("gateway TTFT p50 (ms)", M::Num("/ttft/ttft_gateway/p50_ms", 3)),
                ("gateway TTFT p99 (ms)", M::Num("/ttft/ttft_gateway/p99_ms", 3)),
                ("skipped starts", M::Num("/ttft/skipped", 0)),
                ("errors", M::Num("/ttft/error_count", 0)),
            ],
        ),
    ];
    let cell = |server: &str, m: &M| -> Option<String> {
        match m {
            M::Num(pointer, decimals) => num(&results[server], pointer).map(|v| fmt(Some(v), *decimals)),
            M::OverCeiling => ratio(cpu_per_token(results, server), cpu_per_token(results, "ceiling")).map(|v| format!("{v:.2}")),
            M::LoadShare => cpu_load_share(results, server).map(|v| format!("{v:.1}")),
            M::OtherLoad => {
                let c = &results[server]["cpu"];
                let all = num(c, "/machine_busy_cores")?;
                let ours: f64 = ["/server_cpu_cores", "/upstream_cpu_cores", "/loadgen_cpu_cores"].iter().filter_map(|p| num(c, p)).sum();
                Some(format!("{:.2}", (all - ours).max(0.0)))
            }
            M::Flag(pointer) => {
                results[server].pointer(pointer).and_then(Value::as_bool).map(|b| if b { "yes" } else { "**NO**" }.to_owned())
            }
        }
    };
    let mut out = String::new();
    out.push_str(&format!("| metric | {} |\n", servers.join(" | ")));
    out.push_str(&format!("|---|{}\n", "---:|".repeat(servers.len())));
    for (section, metrics) in rows {
        // A scenario that was not run has no section.
        if !metrics.iter().any(|(_, m)| servers.iter().any(|s| cell(s, m).is_some())) {
            continue;
        }
        out.push_str(&format!("| **{section}** |{}\n", " |".repeat(servers.len())));
        for (label, m) in &metrics {
            let cells: Vec<String> = servers.iter().map(|s| cell(s, m).unwrap_or_else(|| "–".into())).collect();
            out.push_str(&format!("| {label} | {} |\n", cells.join(" | ")));
        }
    }
    for s in &servers {
        if let Some(why) = results[*s]["cpu"]["overload"].as_str() {
            out.push_str(&format!(
                "\n{s}: did not keep up with the cpu scenario's fixed load ({why}); its CPU per token is that of an overloaded server.\n"
            ));
        }
    }
    // The saturation row is meaningless without knowing whether the cap was hit.
    for s in &servers {
        if results[*s]["saturate"]["reached"] == Value::Bool(false) {
            out.push_str(&format!("\n{s}: saturation not reached before the client cap; the real point is higher.\n"));
        }
    }
    out
}

fn first(results: &Value, pointer: &str) -> Option<Value> {
    SERVERS.iter().find_map(|s| results[*s].pointer(pointer).cloned())
}

/// One line per goal: met, missed or not measured.
pub fn goals_text(report: &Value) -> String {
    let mut out = String::new();
    for g in report["goals"].as_array().into_iter().flatten() {
        let mark = match g["met"].as_bool() {
            Some(true) => "met    ",
            Some(false) => "MISSED ",
            None => "n/a    ",
        };
        let mut detail: Vec<String> =
            g.as_object().into_iter().flatten().filter(|(k, _)| *k != "goal" && *k != "met").map(|(k, v)| format!("{k}={v}")).collect();
        detail.sort();
        out.push_str(&format!("{mark} {} ({})\n", g["goal"].as_str().unwrap_or_default(), detail.join(", ")));
    }
    out
}

/// The headline: CPU per delivered token at the fixed load, for every server, with
/// chatwire's cost against the peer's and the ceiling's.
pub fn cpu_line(report: &Value) -> String {
    let results = &report["results"];
    let r = &report["ratios"];
    let us = |s: &str| cpu_per_token(results, s).map_or("n/a".into(), |x| format!("{x:.2} µs"));
    let x = |k: &str| r[k].as_f64().map_or("n/a".into(), |x| format!("{x:.2}×"));
    let load =
        SERVERS.iter().find_map(|s| num(&results[*s]["cpu"], "/offered_tokens_per_s")).map_or("n/a".into(), |t| format!("{t:.0} tokens/s"));
    let mut line = format!(
        "CPU per token at {load}: chatwire {}, nestjs {} (peer/chatwire {}; goal ≥ 5×), \
         ceiling {} (chatwire/ceiling {}; goal ≤ 1.5×)",
        us("chatwire"),
        us("nestjs"),
        x("cpu_per_token"),
        us("ceiling"),
        x("cpu_per_token_over_ceiling"),
    );
    let overloaded = cpu_overloaded(results);
    if !overloaded.is_empty() {
        line.push_str(&format!("; OVERLOADED at that load: {}", overloaded.join(", ")));
    }
    line
}

/// The last line of a bench run.
pub fn ratios_line(report: &Value) -> String {
    let r = &report["ratios"];
    let f = |k: &str| r[k].as_f64().map_or("n/a".into(), |x| format!("{x:.2}"));
    format!(
        "ratios: tokens_per_s={} rss_per_conn={} lag_p99={} ttft_p99={} cpu_per_token={}",
        f("tokens_per_s"),
        f("rss_per_conn"),
        f("lag_p99"),
        f("ttft_p99"),
        f("cpu_per_token")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_chatwire_over_peer_for_throughput_and_peer_over_chatwire_for_costs() {
        let results = json!({
            "chatwire": {
                "idle": {"rss_per_conn_kib": 10.0, "cpu_per_connect_us": 100.0},
                "stream": {"lag": {"p99_ms": 5.0}, "tokens_per_s": 50000.0, "lost_tokens": 0},
                "saturate": {"saturation": {"tokens_per_s": 100000.0}, "steps": [],
                             "tokens_per_answer": 200, "reached": true},
                "ttft": {"ttft_gateway": {"p99_ms": 2.0}},
                "cpu": {"server_cpu_us_per_token": 10.0, "offered_tokens_per_s": 5000.0,
                        "tokens_per_answer": 200, "below_saturation": true},
            },
            "nestjs": {
                "idle": {"rss_per_conn_kib": 15.0, "cpu_per_connect_us": 400.0},
                "stream": {"lag": {"p99_ms": 20.0}, "tokens_per_s": 50000.0, "lost_tokens": 0},
                "saturate": {"saturation": null, "steps": [{"tokens_per_s": 9000.0}, {"tokens_per_s": 10000.0}]},
                "ttft": {"ttft_gateway": {"p99_ms": 6.0}},
                "cpu": {"server_cpu_us_per_token": 60.0, "offered_tokens_per_s": 5000.0, "below_saturation": true},
            },
            "ceiling": {
                "cpu": {"server_cpu_us_per_token": 8.0, "offered_tokens_per_s": 5000.0, "below_saturation": true},
            },
        });
        let r = ratios(&results);
        assert_eq!(r["tokens_per_s"], json!(10.0));
        assert_eq!(r["rss_per_conn"], json!(1.5));
        assert_eq!(r["lag_p99"], json!(4.0));
        assert_eq!(r["ttft_p99"], json!(3.0));
        assert_eq!(r["cpu_per_connect"], json!(4.0));
        assert_eq!(r["cpu_per_token"], json!(6.0));
        assert_eq!(r["cpu_per_token_over_ceiling"], json!(1.25));
        let line = ratios_line(&json!({"ratios": r}));
        assert_eq!(line, "ratios: tokens_per_s=10.00 rss_per_conn=1.50 lag_p99=4.00 ttft_p99=3.00 cpu_per_token=6.00");
        let g = goals(&results);
        let met = |goal: &str| {
            g.as_array().unwrap().iter().find(|x| x["goal"].as_str().unwrap().starts_with(goal)).map(|x| x["met"].clone()).unwrap()
        };
        assert_eq!(met("memory per idle connection"), json!(true));
        assert_eq!(met("zero lost tokens"), json!(true));
        assert_eq!(met("CPU per token at the fixed load at least 5x"), json!(true));
        assert_eq!(met("CPU per token at the fixed load within 1.5x"), json!(true));
        let doc = json!({"results": results, "ratios": r});
        let t = table(&doc);
        assert!(t.starts_with("| metric | chatwire | nestjs | ceiling |"), "{t}");
        // The fixed-load section comes first, with the ceiling ratio and the load share.
        let cpu_at = t.find("| **cpu (").expect("a cpu section");
        assert!(cpu_at < t.find("| **idle (").unwrap(), "{t}");
        assert!(t.contains("| × the ceiling's CPU per token | 1.25 | 7.50 | 1.00 |"), "{t}");
        assert!(t.contains("| load / this run's saturation (%) | 5.0 | – | – |"), "{t}");
        assert!(t.contains("| kept up (below saturation) | yes | yes | yes |"), "{t}");
        let cpu = cpu_line(&doc);
        assert!(cpu.contains("chatwire 10.00 µs") && cpu.contains("peer/chatwire 6.00×"), "{cpu}");
        assert!(cpu.contains("chatwire/ceiling 1.25×") && !cpu.contains("OVERLOADED"), "{cpu}");
    }

    #[test]
    fn an_overloaded_cpu_figure_is_marked() {
        let results = json!({
            "chatwire": {"cpu": {"server_cpu_us_per_token": 10.0, "below_saturation": true}},
            "nestjs": {"cpu": {"server_cpu_us_per_token": 30.0, "below_saturation": false,
                               "overload": "lag p99 250.0 ms > 100 ms"}},
        });
        let doc = json!({"results": results, "ratios": ratios(&results)});
        assert!(cpu_line(&doc).ends_with("OVERLOADED at that load: nestjs"));
        let t = table(&doc);
        assert!(t.contains("| kept up (below saturation) | yes | **NO** |"), "{t}");
        assert!(t.contains("nestjs: did not keep up"), "{t}");
        assert_eq!(goals(&results)[0]["overloaded"], json!(["nestjs"]));
    }

    #[test]
    fn missing_peer_gives_na() {
        let line = ratios_line(&json!({"ratios": ratios(&json!({"chatwire": {}}))}));
        assert_eq!(line, "ratios: tokens_per_s=n/a rss_per_conn=n/a lag_p99=n/a ttft_p99=n/a cpu_per_token=n/a");
    }
}
