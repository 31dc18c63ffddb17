//! Is sonde flat? After a warm-up (caches, allocator arenas, connection tables filling to their
//! working size), the last window of samples is compared with the first: RSS, each kernel map's
//! entry count and sonde's tracked-connection gauge must not grow with time. Completeness and
//! kernel drops are reported beside.
//!
//! Growth fails the command only on runs long enough for it to mean something
//! (`JUDGE_FROM_MINUTES`); a short run (CI's) reports it and fails only on gross failures: no
//! samples, sonde died, a stream never got an answer, no span at all.

use serde::Serialize;

use super::{bpf_maps::MapInfo, sample::Sample};

/// The first 20 % of the run is warm-up, never judged.
const WARMUP_FRACTION: f64 = 0.2;
/// Each compared window is 20 % of the judged part (6 min of a 30-min soak, 10 samples at 30 s):
/// wide enough that one sample's GC-like jitter (a batch in flight, a grown buffer) averages out.
const WINDOW_FRACTION: f64 = 0.2;
/// RSS fails when the last window's median exceeds the first's by both 25 % and 8 MiB. Noise
/// here is a few MiB (export batches, buffers that grow once to their high-water mark); a leak of
/// 4 bytes per request at 1,500 req/s is ~8 MiB over the judged 24 minutes of a 30-min soak (one
/// of 64 bytes per new connection, ~33 MiB), so a leak that matters crosses both bounds. Both are
/// needed: 25 % alone is a few MiB of a small RSS, 8 MiB alone is noise on a large one.
const RSS_GROWTH_PCT: f64 = 25.0;
const RSS_GROWTH_MIB: f64 = 8.0;
/// A per-connection count (map entries, tracked connections) fails when the last window's peak
/// exceeds the first's by half plus 64. The traffic keeps ~50 connections open and a sample
/// catches anywhere between none and all of them mid-request, so peaks move by tens; an entry
/// leaked per 1,000 connections (~375 new ones per second) is ~500 more entries after 24 min.
const COUNT_GROWTH_FACTOR: f64 = 1.5;
const COUNT_GROWTH_SLACK: f64 = 64.0;
/// A map at half its size holds far more than ~50 connections' worth: it is filling, and its LRU
/// will soon evict live state (an entry per open connection is what a leak-free map holds).
const MAP_FULL_FRACTION: f64 = 0.5;
/// Growth is judged (can fail the command) from this run length on.
pub const JUDGE_FROM_MINUTES: f64 = 3.0;

#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub pass: bool,
    /// Whether growth could fail the run (long enough), or was only reported.
    pub growth_judged: bool,
    pub warmup_s: f64,
    /// Sample times (s) of the compared windows.
    pub first_window_s: Vec<f64>,
    pub last_window_s: Vec<f64>,
    pub rss: Option<Growth>,
    /// Kernel maps, then `sonde_connections_tracked`.
    pub counts: Vec<Growth>,
    /// Spans at the receiver ÷ responses the load generators got, % (over the whole run).
    pub completeness_pct: Option<f64>,
    pub kernel_drops: f64,
    /// Problems that fail any run.
    pub failures: Vec<String>,
    /// Growth beyond the thresholds (fails only when `growth_judged`).
    pub growth: Vec<String>,
}

/// One quantity, first window against last.
#[derive(Clone, Debug, Serialize)]
pub struct Growth {
    pub name: String,
    pub first: f64,
    pub last: f64,
    /// last − first (MiB for RSS).
    pub change: f64,
    pub change_pct: Option<f64>,
    /// The map's size, when it is a map.
    pub max_entries: Option<u64>,
    pub ok: bool,
}

/// What the run produced besides the samples.
pub struct Outcome<'a> {
    pub minutes: f64,
    pub samples: &'a [Sample],
    pub maps: &'a [MapInfo],
    pub spans_total: u64,
    pub requests_total: u64,
    pub kernel_drops: f64,
    /// Failures found on the way (sonde died, a stream never answered, …).
    pub failures: Vec<String>,
}

pub fn judge(o: Outcome) -> Verdict {
    let mut failures = o.failures;
    let duration_s = o.minutes * 60.0;
    let warmup_s = duration_s * WARMUP_FRACTION;
    let judged: Vec<&Sample> = o.samples.iter().filter(|s| s.t_s >= warmup_s).collect();
    if o.samples.is_empty() {
        failures.push("no samples were taken".into());
    }
    if o.spans_total == 0 {
        failures.push("no span reached the receiver".into());
    }
    let completeness_pct =
        (o.requests_total > 0).then(|| o.spans_total as f64 / o.requests_total as f64 * 100.0);
    let n = ((judged.len() as f64 * WINDOW_FRACTION).round() as usize).max(1);
    let (first, last) = if judged.len() >= 2 {
        let n = n.min(judged.len() / 2);
        (&judged[..n], &judged[judged.len() - n..])
    } else {
        (&judged[..0], &judged[..0])
    };
    let mut growth = Vec::new();
    let mut rss = None;
    let mut counts = Vec::new();
    if !first.is_empty() {
        let mib = |s: &&Sample| s.rss_kib as f64 / 1024.0;
        let (a, b) = (median(first.iter().map(mib)), median(last.iter().map(mib)));
        let pct = (b - a) / a.max(1e-9) * 100.0;
        let ok = !(pct > RSS_GROWTH_PCT && b - a > RSS_GROWTH_MIB);
        if !ok {
            growth.push(format!("RSS grew {a:.1} → {b:.1} MiB (+{pct:.0} %)"));
        }
        rss = Some(Growth {
            name: "RSS MiB (median)".into(),
            first: a,
            last: b,
            change: b - a,
            change_pct: Some(pct),
            max_entries: None,
            ok,
        });
        for m in o.maps {
            let get = |s: &&Sample| s.map_entries.get(&m.name).copied().unwrap_or(0) as f64;
            let c =
                count_growth(&m.name, peak(first.iter().map(get)), peak(last.iter().map(get)), &mut growth);
            counts.push(Growth { max_entries: Some(m.max_entries), ..c });
        }
        let tracked = |s: &&Sample| s.metric("sonde_connections_tracked").unwrap_or(0.0);
        counts.push(count_growth(
            "sonde_connections_tracked",
            peak(first.iter().map(tracked)),
            peak(last.iter().map(tracked)),
            &mut growth,
        ));
    } else if !o.samples.is_empty() {
        growth.push("too few samples after the warm-up to compare two windows".into());
    }
    // A map filling up is a failure at any run length: it means entries outlive connections.
    for m in o.maps {
        let most = o.samples.iter().filter_map(|s| s.map_entries.get(&m.name)).max().copied().unwrap_or(0);
        if m.max_entries > 0 && most as f64 >= m.max_entries as f64 * MAP_FULL_FRACTION {
            failures.push(format!("map {} reached {most} of {} entries", m.name, m.max_entries));
        }
    }
    let growth_judged = o.minutes >= JUDGE_FROM_MINUTES;
    Verdict {
        pass: failures.is_empty() && (!growth_judged || growth.is_empty()),
        growth_judged,
        warmup_s,
        first_window_s: first.iter().map(|s| s.t_s.round()).collect(),
        last_window_s: last.iter().map(|s| s.t_s.round()).collect(),
        rss,
        counts,
        completeness_pct,
        kernel_drops: o.kernel_drops,
        failures,
        growth,
    }
}

fn count_growth(name: &str, first: f64, last: f64, growth: &mut Vec<String>) -> Growth {
    let ok = last <= first * COUNT_GROWTH_FACTOR + COUNT_GROWTH_SLACK;
    if !ok {
        growth.push(format!("{name} grew from a peak of {first:.0} to {last:.0}"));
    }
    let change_pct = (first > 0.0).then(|| (last - first) / first * 100.0);
    Growth { name: name.to_owned(), first, last, change: last - first, change_pct, max_entries: None, ok }
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn peak(values: impl Iterator<Item = f64>) -> f64 {
    values.fold(0.0, f64::max)
}

/// The verdict for people.
pub fn text(v: &Verdict) -> String {
    let mut s = String::new();
    let window = |w: &[f64]| match (w.first(), w.last()) {
        (Some(a), Some(b)) => format!("{a:.0}–{b:.0} s"),
        _ => "-".into(),
    };
    s.push_str(&format!(
        "after a {:.0} s warm-up, first window {} vs last window {}:\n",
        v.warmup_s,
        window(&v.first_window_s),
        window(&v.last_window_s)
    ));
    for g in v.rss.iter().chain(&v.counts) {
        let pct = g.change_pct.map_or(String::new(), |p| format!(" ({p:+.0} %)"));
        let size = g.max_entries.map_or(String::new(), |m| format!(" of {m}"));
        let mark = if g.ok { "ok" } else { "GROWS" };
        s.push_str(&format!(
            "  {:<28} {:>9.1} → {:>9.1}{size}  {:+.1}{pct}  {mark}\n",
            g.name, g.first, g.last, g.change
        ));
    }
    let compl = v.completeness_pct.map_or("-".into(), |c| format!("{c:.2} %"));
    s.push_str(&format!("  completeness (spans ÷ responses) {compl}, kernel drops {:.0}\n", v.kernel_drops));
    for f in &v.failures {
        s.push_str(&format!("  FAILURE: {f}\n"));
    }
    for g in &v.growth {
        let judged = if v.growth_judged { "FAILURE" } else { "reported (run too short to judge)" };
        s.push_str(&format!("  {judged}: {g}\n"));
    }
    s.push_str(if v.pass { "soak: PASS" } else { "soak: FAIL" });
    s
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::{super::bpf_maps::MapInfo, Outcome, Sample, judge};

    /// A sample every 30 s for `minutes`, RSS and CONNS given by functions of time.
    fn samples(minutes: f64, rss_mib: impl Fn(f64) -> f64, conns: impl Fn(f64) -> u64) -> Vec<Sample> {
        (1..=(minutes * 2.0) as u32)
            .map(|k| {
                let t_s = f64::from(k) * 30.0;
                Sample {
                    t_s,
                    rss_kib: (rss_mib(t_s) * 1024.0) as u64,
                    map_entries: BTreeMap::from([("CONNS".to_owned(), conns(t_s))]),
                    metrics: BTreeMap::from([("sonde_connections_tracked".to_owned(), 35.0)]),
                    spans_received: k.into(),
                    nginx_served: k.into(),
                    load_completed: k.into(),
                }
            })
            .collect()
    }

    fn outcome(minutes: f64, samples: &[Sample], maps: &[MapInfo]) -> super::Verdict {
        let o = Outcome {
            minutes,
            samples,
            maps,
            spans_total: 100,
            requests_total: 100,
            kernel_drops: 0.0,
            failures: Vec::new(),
        };
        judge(o)
    }

    fn conns_map() -> Vec<MapInfo> {
        vec![MapInfo { name: "CONNS".into(), id: 1, max_entries: 65536 }]
    }

    #[test]
    fn flat_passes() {
        let s = samples(30.0, |t| 30.0 + (t / 30.0) % 3.0, |t| 35 + (t as u64 / 30) % 20);
        let v = outcome(30.0, &s, &conns_map());
        assert!(v.pass, "{v:#?}");
        assert_eq!(v.first_window_s.len(), 10);
    }

    #[test]
    fn a_leak_fails_a_long_run_and_is_only_reported_in_a_short_one() {
        // 20 KiB/s: +36 MiB over the judged part of 30 minutes.
        let s = samples(30.0, |t| 30.0 + t * 20.0 / 1024.0, |_| 35);
        let v = outcome(30.0, &s, &conns_map());
        assert!(!v.pass && v.growth.iter().any(|g| g.contains("RSS")), "{v:#?}");
        let s = samples(2.0, |t| 30.0 + t, |_| 35);
        let v = outcome(2.0, &s, &conns_map());
        assert!(v.pass && !v.growth_judged && !v.growth.is_empty(), "{v:#?}");
    }

    #[test]
    fn a_growing_or_filling_map_fails() {
        let s = samples(30.0, |_| 30.0, |t| 35 + t as u64 / 2);
        assert!(!outcome(30.0, &s, &conns_map()).pass);
        // Full from the start: no growth to see, but far more than ~50 open connections.
        let s = samples(30.0, |_| 30.0, |_| 60_000);
        let v = outcome(30.0, &s, &conns_map());
        assert!(!v.pass && v.failures.iter().any(|f| f.contains("CONNS")), "{v:#?}");
    }

    #[test]
    fn no_span_fails_any_run() {
        let s = samples(0.5, |_| 30.0, |_| 35);
        let maps = conns_map();
        let v = judge(Outcome {
            minutes: 0.5,
            samples: &s,
            maps: &maps,
            spans_total: 0,
            requests_total: 100,
            kernel_drops: 0.0,
            failures: Vec::new(),
        });
        assert!(!v.pass, "{v:#?}");
    }
}
