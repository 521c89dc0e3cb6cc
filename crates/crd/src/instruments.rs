//! The instruments the simulated exchange can trade: currency pairs and crypto, each
//! with a realistic starting price, volatility and trade size. An experiment names
//! them by symbol; anything else is rejected (by the schema enum in a cluster, by
//! the YAML loader locally).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An instrument from ticklab's catalogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Instrument {
    #[serde(rename = "EURUSD")]
    EurUsd,
    #[serde(rename = "GBPUSD")]
    GbpUsd,
    #[serde(rename = "USDJPY")]
    UsdJpy,
    #[serde(rename = "USDCHF")]
    UsdChf,
    #[serde(rename = "AUDUSD")]
    AudUsd,
    #[serde(rename = "USDCAD")]
    UsdCad,
    #[serde(rename = "NZDUSD")]
    NzdUsd,
    #[serde(rename = "EURGBP")]
    EurGbp,
    #[serde(rename = "EURJPY")]
    EurJpy,
    #[serde(rename = "BTCUSD")]
    BtcUsd,
    #[serde(rename = "ETHUSD")]
    EthUsd,
    #[serde(rename = "SOLUSD")]
    SolUsd,
    #[serde(rename = "XRPUSD")]
    XrpUsd,
    #[serde(rename = "ADAUSD")]
    AdaUsd,
}

/// How an instrument's simulated prices and sizes behave.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InstrumentProfile {
    pub symbol: &'static str,
    /// Price the random walk starts from.
    pub start_price: f64,
    /// Smallest price increment; every generated price is a multiple of it.
    pub tick_size: f64,
    /// Standard deviation of one trade's relative price move.
    pub step_volatility: f64,
    /// Typical trade size (sizes are drawn around it).
    pub typical_quantity: f64,
    /// Smallest size increment.
    pub lot_size: f64,
}

impl Instrument {
    pub const ALL: [Instrument; 14] = [
        Instrument::EurUsd,
        Instrument::GbpUsd,
        Instrument::UsdJpy,
        Instrument::UsdChf,
        Instrument::AudUsd,
        Instrument::UsdCad,
        Instrument::NzdUsd,
        Instrument::EurGbp,
        Instrument::EurJpy,
        Instrument::BtcUsd,
        Instrument::EthUsd,
        Instrument::SolUsd,
        Instrument::XrpUsd,
        Instrument::AdaUsd,
    ];

    pub fn profile(self) -> InstrumentProfile {
        // (symbol, start, tick, step volatility, typical size, lot)
        let (symbol, start_price, tick_size, step_volatility, typical_quantity, lot_size) =
            match self {
                Instrument::EurUsd => ("EURUSD", 1.0850, 0.00001, 2e-5, 1_000_000.0, 1000.0),
                Instrument::GbpUsd => ("GBPUSD", 1.2700, 0.00001, 2.5e-5, 1_000_000.0, 1000.0),
                Instrument::UsdJpy => ("USDJPY", 150.00, 0.001, 2.5e-5, 1_000_000.0, 1000.0),
                Instrument::UsdChf => ("USDCHF", 0.8800, 0.00001, 2.5e-5, 1_000_000.0, 1000.0),
                Instrument::AudUsd => ("AUDUSD", 0.6600, 0.00001, 3e-5, 1_000_000.0, 1000.0),
                Instrument::UsdCad => ("USDCAD", 1.3600, 0.00001, 2e-5, 1_000_000.0, 1000.0),
                Instrument::NzdUsd => ("NZDUSD", 0.6100, 0.00001, 3e-5, 1_000_000.0, 1000.0),
                Instrument::EurGbp => ("EURGBP", 0.8550, 0.00001, 2e-5, 1_000_000.0, 1000.0),
                Instrument::EurJpy => ("EURJPY", 162.50, 0.001, 3e-5, 1_000_000.0, 1000.0),
                Instrument::BtcUsd => ("BTCUSD", 60_000.0, 0.01, 1e-4, 0.05, 0.00001),
                Instrument::EthUsd => ("ETHUSD", 3_000.0, 0.01, 1.2e-4, 1.0, 0.0001),
                Instrument::SolUsd => ("SOLUSD", 150.0, 0.001, 1.5e-4, 20.0, 0.001),
                Instrument::XrpUsd => ("XRPUSD", 0.55, 0.00001, 1.5e-4, 5_000.0, 1.0),
                Instrument::AdaUsd => ("ADAUSD", 0.45, 0.00001, 1.5e-4, 5_000.0, 1.0),
            };
        InstrumentProfile {
            symbol,
            start_price,
            tick_size,
            step_volatility,
            typical_quantity,
            lot_size,
        }
    }

    pub fn symbol(self) -> &'static str {
        self.profile().symbol
    }

    pub fn from_symbol(symbol: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|i| i.symbol() == symbol)
    }

    /// "EURUSD, GBPUSD, …" for error messages.
    pub fn known_symbols() -> String {
        Self::ALL.map(Instrument::symbol).join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_are_unique_and_round_trip() {
        for i in Instrument::ALL {
            assert_eq!(Instrument::from_symbol(i.symbol()), Some(i));
            let yaml = serde_json::to_string(&i).unwrap();
            assert_eq!(yaml, format!("\"{}\"", i.symbol()));
            assert!(i.symbol().len() <= 8);
        }
        assert_eq!(Instrument::from_symbol("FOOBAR"), None);
    }
}
