//! The OpenAPI document names every route the router serves.

#[test]
fn every_route_is_documented() {
    let spec: serde_json::Value = serde_json::from_str(include_str!("../docs/openapi.json")).expect("valid JSON");
    let paths = spec["paths"].as_object().expect("paths");
    let router = include_str!("../src/http/mod.rs");
    let mut routes = 0;
    for line in router.lines() {
        let Some(rest) = line.trim().strip_prefix(".route(\"") else { continue };
        let route = rest.split('"').next().unwrap();
        routes += 1;
        assert!(paths.contains_key(route), "{route} is served but not in docs/openapi.json");
    }
    assert!(routes > 20, "found {routes} routes");
}
