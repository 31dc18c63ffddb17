//! Head sampling as OpenTelemetry SDKs do it (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`):
//! which traces are exported. Decided where a trace enters sonde's view — a new trace, or a
//! request that came with a `traceparent` — and inherited by every span of the trace after that,
//! so a trace is kept or dropped whole. RED metrics and the service graph count every request
//! whatever the decision.
//!
//! The ratio is taken on the trace id, as the OTel SDKs' `TraceIdRatioBased` does (the Rust SDK's
//! rule: the id's low 8 bytes, shifted right by one, below `ratio × 2^63`): every sonde on every
//! host, and an SDK with the same ratio, keeps the same traces.

use crate::span::model::{TraceFlags, TraceId};

/// A sampler by its `OTEL_TRACES_SAMPLER` name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SamplerName {
    #[value(name = "always_on")]
    AlwaysOn,
    #[value(name = "always_off")]
    AlwaysOff,
    #[value(name = "traceidratio")]
    TraceIdRatio,
    #[value(name = "parentbased_always_on")]
    ParentBasedAlwaysOn,
    #[value(name = "parentbased_always_off")]
    ParentBasedAlwaysOff,
    #[value(name = "parentbased_traceidratio")]
    ParentBasedTraceIdRatio,
}

/// What decides for a trace with no parent (or, without `parent_based`, for every trace).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule {
    AlwaysOn,
    AlwaysOff,
    /// Keep this share of traces, 0.0 to 1.0.
    Ratio(f64),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampler {
    /// A trace that comes with a parent follows the parent's sampled flag.
    pub parent_based: bool,
    pub rule: Rule,
}

impl Default for Sampler {
    /// The SDKs' default, `parentbased_always_on`.
    fn default() -> Self {
        Sampler { parent_based: true, rule: Rule::AlwaysOn }
    }
}

impl Sampler {
    /// The sampler `name` names, with `ratio` for the ratio samplers (the spec's default 1.0 when
    /// none is given).
    pub fn new(name: SamplerName, ratio: Option<f64>) -> Self {
        let ratio = Rule::Ratio(ratio.unwrap_or(1.0));
        let (parent_based, rule) = match name {
            SamplerName::AlwaysOn => (false, Rule::AlwaysOn),
            SamplerName::AlwaysOff => (false, Rule::AlwaysOff),
            SamplerName::TraceIdRatio => (false, ratio),
            SamplerName::ParentBasedAlwaysOn => (true, Rule::AlwaysOn),
            SamplerName::ParentBasedAlwaysOff => (true, Rule::AlwaysOff),
            SamplerName::ParentBasedTraceIdRatio => (true, ratio),
        };
        Sampler { parent_based, rule }
    }

    /// The flags a trace entering here is exported with: `parent` are the flags its caller sent
    /// (None: it starts here). Other flag bits go on as they came.
    pub fn decide(&self, trace_id: TraceId, parent: Option<TraceFlags>) -> TraceFlags {
        let sampled = match parent {
            Some(flags) if self.parent_based => flags.is_sampled(),
            _ => self.rule.keeps(trace_id),
        };
        parent.unwrap_or_default().with_sampled(sampled)
    }
}

impl Rule {
    /// Whether a trace with no parent is kept. A ratio keeps the trace ids whose low 63 bits are
    /// below it, so the ids kept at one ratio are kept at every higher one.
    pub fn keeps(self, trace_id: TraceId) -> bool {
        match self {
            Rule::AlwaysOn => true,
            Rule::AlwaysOff => false,
            Rule::Ratio(ratio) if ratio >= 1.0 => true,
            Rule::Ratio(ratio) => {
                let bound = (ratio.max(0.0) * (1u64 << 63) as f64) as u64;
                let low = u64::from_be_bytes(trace_id.to_bytes()[8..].try_into().unwrap_or_default());
                (low >> 1) < bound
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(low: u64) -> TraceId {
        TraceId::from(u128::from(low) | (7 << 64))
    }

    #[test]
    fn ratio_follows_the_trace_id_low_bytes() {
        let half = Sampler::new(SamplerName::TraceIdRatio, Some(0.5));
        assert!(half.decide(id(0), None).is_sampled());
        assert!(half.decide(id((1 << 63) - 1), None).is_sampled());
        assert!(!half.decide(id(1 << 63), None).is_sampled());
        assert!(!half.decide(id(u64::MAX), None).is_sampled());
        let none = Sampler::new(SamplerName::TraceIdRatio, Some(0.0));
        assert!(!none.decide(id(0), None).is_sampled());
        let all = Sampler::new(SamplerName::TraceIdRatio, None);
        assert!(all.decide(id(u64::MAX), None).is_sampled(), "the spec's default ratio is 1.0");
    }

    #[test]
    fn ratio_keeps_about_its_share() {
        let tenth = Sampler::new(SamplerName::TraceIdRatio, Some(0.1));
        let kept = (0..100_000u64)
            .filter(|i| tenth.decide(id(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)), None).is_sampled())
            .count();
        assert!((9_000..11_000).contains(&kept), "{kept} of 100000 kept at 0.1");
    }

    #[test]
    fn parent_based_follows_the_parent_and_others_do_not() {
        let (on, off) = (Some(TraceFlags::SAMPLED), Some(TraceFlags::NOT_SAMPLED));
        let default = Sampler::default();
        assert!(default.decide(id(1), on).is_sampled());
        assert!(!default.decide(id(1), off).is_sampled());
        assert!(default.decide(id(1), None).is_sampled());

        let pb_off = Sampler::new(SamplerName::ParentBasedAlwaysOff, None);
        assert!(pb_off.decide(id(1), on).is_sampled(), "a sampled parent wins");
        assert!(!pb_off.decide(id(1), None).is_sampled(), "roots are dropped");

        let pb_ratio = Sampler::new(SamplerName::ParentBasedTraceIdRatio, Some(0.0));
        assert!(pb_ratio.decide(id(1), on).is_sampled());
        assert!(!pb_ratio.decide(id(1), None).is_sampled());

        assert!(Sampler::new(SamplerName::AlwaysOn, None).decide(id(1), off).is_sampled());
        assert!(!Sampler::new(SamplerName::AlwaysOff, None).decide(id(1), on).is_sampled());
    }

    #[test]
    fn other_flag_bits_go_on() {
        let random = TraceFlags::new(0x02 | 0x01);
        let flags = Sampler::new(SamplerName::AlwaysOff, None).decide(id(1), Some(random));
        assert_eq!(flags.to_u8(), 0x02);
    }
}
