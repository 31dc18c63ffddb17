//! `OTEL_RESOURCE_ATTRIBUTES` of a traced process: what its SDK would add to its resource, so
//! sonde adds it too (https://opentelemetry.io/docs/specs/otel/resource/sdk/#specifying-resource-information-via-an-environment-variable).
//! The value is `key=value` pairs separated by commas, values percent-encoded. A malformed pair
//! is skipped, as the SDKs do, and the rest kept.

/// Pairs kept, and the longest key and value: a process's environment must not grow sonde.
const MAX_PAIRS: usize = 64;
const MAX_KEY: usize = 128;
const MAX_VALUE: usize = 1024;

pub fn resource_attributes(value: &str) -> Vec<(String, String)> {
    value
        .split(',')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            let key = key.trim();
            let value = crate::export::config::percent_decode(value.trim())?;
            (!key.is_empty() && key.len() <= MAX_KEY && value.len() <= MAX_VALUE)
                .then(|| (key.to_owned(), value))
        })
        .take(MAX_PAIRS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_decoded_and_malformed_ones_skipped() {
        let got = resource_attributes(
            "service.name=cart, deployment.environment.name=prod,team=a%2Cb%20c,broken,=nokey,bad=%zz,k=",
        );
        let want =
            [("service.name", "cart"), ("deployment.environment.name", "prod"), ("team", "a,b c"), ("k", "")];
        assert_eq!(got, want.map(|(k, v)| (k.to_owned(), v.to_owned())));
        assert!(resource_attributes("").is_empty());
        assert_eq!(resource_attributes(&"a=b,".repeat(1000)).len(), MAX_PAIRS);
    }
}
