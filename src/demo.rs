//! The demo city: eight dark stores in Bengaluru, a grocery catalog of a few hundred SKUs, stock
//! (fresh food with expiry dates) and riders, loaded once into an empty database; and the
//! simulator's traffic through it, in-process, while the demo runs.

use std::sync::Arc;

use tokio::task::JoinSet;

use crate::model::Product;
use crate::riders::Riders;
use crate::state::State;
use crate::{BoxError, Server, auth};

/// (id, name, lat, lng): real neighbourhoods of Bengaluru.
pub const STORES: [(&str, &str, f64, f64); 8] = [
    ("blr-indiranagar", "Indiranagar", 12.9719, 77.6412),
    ("blr-koramangala", "Koramangala", 12.9352, 77.6245),
    ("blr-hsr", "HSR Layout", 12.9116, 77.6474),
    ("blr-jayanagar", "Jayanagar", 12.9308, 77.5838),
    ("blr-malleshwaram", "Malleshwaram", 13.0035, 77.5710),
    ("blr-whitefield", "Whitefield", 12.9698, 77.7500),
    ("blr-hebbal", "Hebbal", 13.0358, 77.5970),
    ("blr-btm", "BTM Layout", 12.9166, 77.6101),
];

/// Riders each store gets.
pub const RIDERS_PER_STORE: usize = 6;

/// (category, shelf life in days or 0 for none, base products, variants with price multipliers)
type Family = (&'static str, i64, &'static [(&'static str, i64)], &'static [(&'static str, i64)]);

const FAMILIES: [Family; 8] = [
    (
        "fruit_veg",
        4,
        &[
            ("Banana Robusta", 4900),
            ("Apple Shimla", 16900),
            ("Tomato Hybrid", 3200),
            ("Onion", 3900),
            ("Potato", 3500),
            ("Carrot Ooty", 5900),
            ("Spinach", 2500),
            ("Coriander", 1500),
            ("Cucumber", 2900),
            ("Capsicum Green", 4500),
            ("Lemon", 2000),
            ("Ginger", 3000),
            ("Pomegranate", 18900),
            ("Papaya", 6900),
            ("Mango Alphonso", 39900),
            ("Grapes Green", 9900),
        ],
        &[("500 g", 100), ("1 kg", 190), ("Organic 500 g", 160)],
    ),
    (
        "dairy",
        7,
        &[
            ("Toned Milk", 2700),
            ("Full Cream Milk", 3400),
            ("Curd", 3500),
            ("Paneer", 9000),
            ("Butter", 5600),
            ("Cheese Slices", 14000),
            ("Greek Yogurt", 6000),
            ("Buttermilk", 1500),
            ("Ghee", 32000),
            ("Fresh Cream", 7000),
            ("Mozzarella", 19000),
            ("Lassi", 2500),
        ],
        &[("small", 100), ("medium", 190), ("family pack", 350)],
    ),
    (
        "bakery",
        3,
        &[
            ("White Bread", 4500),
            ("Brown Bread", 5000),
            ("Multigrain Bread", 6000),
            ("Burger Buns", 4000),
            ("Pav", 3500),
            ("Croissant", 9000),
            ("Rusk", 6000),
            ("Muffin Chocolate", 8000),
        ],
        &[("single", 100), ("pack of 2", 190), ("pack of 4", 360)],
    ),
    (
        "staples",
        0,
        &[
            ("Basmati Rice", 12000),
            ("Sona Masoori Rice", 8000),
            ("Whole Wheat Atta", 5500),
            ("Toor Dal", 16000),
            ("Moong Dal", 15000),
            ("Chana Dal", 11000),
            ("Sunflower Oil", 17000),
            ("Mustard Oil", 19000),
            ("Sugar", 5000),
            ("Iodised Salt", 2800),
            ("Poha", 4500),
            ("Rava", 4000),
            ("Besan", 7000),
            ("Rajma", 14000),
            ("Tea", 15000),
            ("Coffee Filter", 18000),
        ],
        &[("500 g", 100), ("1 kg", 185), ("5 kg", 850)],
    ),
    (
        "snacks",
        0,
        &[
            ("Potato Chips Salted", 2000),
            ("Potato Chips Masala", 2000),
            ("Nachos", 5000),
            ("Bhujia", 5500),
            ("Cookies Butter", 3000),
            ("Cookies Choco Chip", 4000),
            ("Cream Biscuits", 3000),
            ("Digestive Biscuits", 4500),
            ("Peanuts Roasted", 6000),
            ("Cashews", 22000),
            ("Almonds", 25000),
            ("Popcorn", 3500),
            ("Dark Chocolate", 10000),
            ("Milk Chocolate", 6000),
            ("Granola Bar", 4000),
            ("Instant Noodles", 1400),
        ],
        &[("regular", 100), ("large", 180), ("party pack", 320)],
    ),
    (
        "beverages",
        0,
        &[
            ("Cola", 4000),
            ("Lemon Soda", 3500),
            ("Orange Juice", 11000),
            ("Mango Drink", 3500),
            ("Coconut Water", 6000),
            ("Mineral Water", 2000),
            ("Iced Tea", 5000),
            ("Energy Drink", 12500),
            ("Cold Coffee", 6500),
            ("Tonic Water", 7000),
        ],
        &[("250 ml", 100), ("750 ml", 200), ("2 l", 380)],
    ),
    (
        "household",
        0,
        &[
            ("Detergent Powder", 12000),
            ("Liquid Detergent", 22000),
            ("Dishwash Liquid", 10000),
            ("Dishwash Bar", 3000),
            ("Floor Cleaner", 11000),
            ("Toilet Cleaner", 9500),
            ("Garbage Bags", 9000),
            ("Kitchen Towels", 12000),
            ("Toilet Paper", 15000),
            ("Aluminium Foil", 9000),
            ("Mosquito Repellent", 8500),
            ("Matchbox", 200),
        ],
        &[("small", 100), ("large", 190), ("value pack", 330)],
    ),
    (
        "personal_care",
        0,
        &[
            ("Bath Soap", 4500),
            ("Shampoo", 18000),
            ("Conditioner", 20000),
            ("Toothpaste", 11000),
            ("Toothbrush", 4000),
            ("Face Wash", 15000),
            ("Hand Wash", 9900),
            ("Body Lotion", 25000),
            ("Deodorant", 19900),
            ("Shaving Foam", 17500),
            ("Sanitary Pads", 16000),
            ("Baby Wipes", 15000),
        ],
        &[("travel", 60), ("regular", 100), ("jumbo", 250)],
    ),
];

/// The demo catalog, deterministic: (product, shelf life in days or 0).
pub fn catalog() -> Vec<(Product, i64)> {
    let mut out = Vec::new();
    for (category, shelf_days, bases, variants) in FAMILIES {
        for (base, price) in bases {
            for (variant, pct) in variants {
                let slug: String = format!("{base}-{variant}")
                    .to_lowercase()
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                    .collect();
                let slug = slug.split('-').filter(|p| !p.is_empty()).collect::<Vec<_>>().join("-");
                out.push((
                    Product::new(&slug, format!("{base}, {variant}"), category.to_owned(), price * pct / 100, 5),
                    shelf_days,
                ));
            }
        }
    }
    out
}

/// A small deterministic hash for stock quantities.
fn spread(a: &str, b: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for byte in a.bytes().chain([0]).chain(b.bytes()) {
        h ^= byte as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Loads the demo city unless the database already has stores.
pub async fn load_city(state: &Arc<State>, riders: &Arc<Riders>) -> Result<(), BoxError> {
    if !state.stores().is_empty() {
        tracing::info!("the database already has stores: the demo city is not loaded again");
        return Ok(());
    }
    let started = std::time::Instant::now();
    for (id, name, lat, lng) in STORES {
        state.put_store(id, name, lat, lng, Default::default()).await.map_err(|e| format!("demo store {id}: {e:?}"))?;
    }
    let products = catalog();
    let mut tasks = JoinSet::new();
    for (product, _) in &products {
        let state = state.clone();
        let product = product.clone();
        tasks.spawn(async move { state.put_product(product).await.map(|_| ()) });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let now = state.now();
    for (store_id, _, _, _) in STORES {
        for (product, shelf_days) in &products {
            let h = spread(store_id, &product.sku);
            // One SKU in twelve is out of stock, so availability has gaps.
            if h.is_multiple_of(12) {
                continue;
            }
            let qty = 5 + (h % 56) as i64;
            let expires_at = (*shelf_days > 0).then(|| now + shelf_days * 86_400_000 - (h % 36) as i64 * 3_600_000);
            let state = state.clone();
            let sku = product.sku.to_string();
            tasks.spawn(async move {
                state
                    .adjust_stock(store_id, &sku, qty, "restock", expires_at)
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("{e:?}"))
            });
        }
        for i in 0..RIDERS_PER_STORE {
            let riders = riders.clone();
            let id = format!("{store_id}-rider-{i}");
            let name = format!("Rider {} of {}", i + 1, store_id.trim_start_matches("blr-"));
            tasks.spawn(async move { riders.register(&id, &name, Some(store_id), now).await.map(|_| ()) });
        }
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    tracing::info!(
        stores = STORES.len(),
        products = products.len(),
        millis = started.elapsed().as_millis() as u64,
        "demo city loaded"
    );
    Ok(())
}

/// Starts the simulator in-process against the running server, at a pace a person can follow on
/// the dashboard: 24 riders, an order every five seconds on average, riders and pickers four times
/// faster than real time. It runs until the server stops.
#[cfg(feature = "demo-traffic")]
pub fn start_traffic(server: &Server, secret: &str) {
    let mqtt = server.mqtt_url.clone().unwrap_or_default();
    let mut cfg = darkstore_sim::city::RunConfig::new(&format!("http://{}", server.http_addr), &mqtt, secret);
    cfg.riders = 24;
    cfg.order_rate = 0.2;
    cfg.speedup = 4.0;
    cfg.duration = std::time::Duration::from_secs(365 * 86_400);
    tokio::spawn(async move {
        match darkstore_sim::city::run(cfg).await {
            Ok(report) => tracing::info!("demo traffic ended:\n{}", report.human()),
            Err(e) => tracing::error!(error = %e, "demo traffic could not start"),
        }
    });
}

/// Without the `demo-traffic` feature (a production build), the demo city has no simulated
/// traffic: the simulator's HTTP client is not linked in.
#[cfg(not(feature = "demo-traffic"))]
pub fn start_traffic(_server: &Server, _secret: &str) {
    tracing::warn!("built without the demo-traffic feature: the demo city runs without simulated traffic");
}

/// Tells the person at the terminal where to look (on stderr; stdout carries the ready line).
pub fn print_welcome(server: &Server, secret: &str) {
    let exp = server.app.clock.now_secs() + 7 * 86_400;
    let token = |role, sub: &str, store: Option<&str>| {
        auth::sign(secret.as_bytes(), &auth::Claims { sub: sub.to_owned(), role, store: store.map(str::to_owned), exp })
    };
    let admin = token(auth::Role::Admin, "demo-admin", None);
    let staff = token(auth::Role::Staff, "demo-staff", Some(STORES[0].0));
    let customer = token(auth::Role::Customer, "demo-customer", None);
    let base = format!("http://{}", server.http_addr);
    eprintln!(
        "\n  darkstore demo is running.\n\n  dashboard:      {base}/#token={staff}\n  availability:   {base}/v1/availability?lat=12.9719&lng=77.6412\n  \
         API document:   {base}/openapi.json\n  metrics:        {base}/metrics\n\n  admin token:    {admin}\n  \
         staff token ({}): {staff}\n  customer token: {customer}\n\n  Ctrl-C stops it.\n",
        STORES[0].0
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_is_a_real_grocery_range() {
        let products = catalog();
        assert!(products.len() >= 300, "{} SKUs", products.len());
        let mut skus: Vec<&str> = products.iter().map(|(p, _)| &*p.sku).collect();
        skus.sort();
        skus.dedup();
        assert_eq!(skus.len(), products.len(), "SKUs are unique");
        assert!(skus.iter().all(|s| darkstore_geoinv::ids::valid_id(s)));
        let fresh = products.iter().filter(|(_, days)| *days > 0).count();
        assert!(fresh >= 50, "{fresh} fresh SKUs with expiry");
    }
}
