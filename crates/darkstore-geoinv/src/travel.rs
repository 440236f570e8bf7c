//! The travel model: how long a delivery from a store to a point takes.
//!
//! `eta = picking allowance + great-circle distance × detour factor ÷ rider speed`. The detour
//! factor stands for the road network (a rider never rides the straight line); the picking
//! allowance is the time from "order confirmed" to "rider leaves the store". A point is within the
//! promise when its eta is at most the promise.

use geo::{Distance, Haversine, Point};

/// The knobs of the travel model. All are configurable on the server's command line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TravelModel {
    /// Rider speed on the road, metres per second (default 5.0, i.e. 18 km/h on a scooter in town).
    pub rider_speed_mps: f64,
    /// Road distance divided by great-circle distance (default 1.4, typical of city grids).
    pub detour_factor: f64,
    /// Minutes from confirmation until the rider leaves the store (default 2.0).
    pub picking_minutes: f64,
    /// The delivery promise in minutes (default 10).
    pub promise_minutes: f64,
}

impl Default for TravelModel {
    fn default() -> Self {
        TravelModel { rider_speed_mps: 5.0, detour_factor: 1.4, picking_minutes: 2.0, promise_minutes: 10.0 }
    }
}

impl TravelModel {
    /// Minutes from confirmation to the door for a customer `distance_m` metres (great circle)
    /// from the store.
    pub fn eta_minutes(&self, distance_m: f64) -> f64 {
        self.picking_minutes + self.ride_minutes(distance_m)
    }

    /// Minutes of riding for `distance_m` metres of great-circle distance.
    pub fn ride_minutes(&self, distance_m: f64) -> f64 {
        distance_m * self.detour_factor / self.rider_speed_mps / 60.0
    }

    /// The great-circle radius a store reaches within the promise (0 when picking alone breaks it).
    pub fn reach_m(&self) -> f64 {
        let ride_minutes = (self.promise_minutes - self.picking_minutes).max(0.0);
        ride_minutes * 60.0 * self.rider_speed_mps / self.detour_factor
    }

    /// True when the parameters describe a usable model (positive, finite speed and detour ≥ 1).
    pub fn is_valid(&self) -> bool {
        self.rider_speed_mps.is_finite()
            && self.rider_speed_mps > 0.0
            && self.detour_factor.is_finite()
            && self.detour_factor >= 1.0
            && self.picking_minutes.is_finite()
            && self.picking_minutes >= 0.0
            && self.promise_minutes.is_finite()
            && self.promise_minutes > 0.0
    }
}

/// Great-circle distance in metres between two WGS84 points given as (lat, lng) degrees.
pub fn distance_m(lat1: f64, lng1: f64, lat2: f64, lng2: f64) -> f64 {
    Haversine.distance(Point::new(lng1, lat1), Point::new(lng2, lat2))
}

/// True when (lat, lng) are finite WGS84 degrees in range.
pub fn valid_coordinates(lat: f64, lng: f64) -> bool {
    lat.is_finite() && lng.is_finite() && (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lng)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_and_reach_agree() {
        let model = TravelModel::default();
        let reach = model.reach_m();
        // At exactly the reach radius the eta equals the promise.
        assert!((model.eta_minutes(reach) - model.promise_minutes).abs() < 1e-9);
        // 8 minutes of riding at 5 m/s with a 1.4 detour: 2400 m / 1.4.
        assert!((reach - 2400.0 / 1.4).abs() < 1e-6);
    }

    #[test]
    fn picking_longer_than_promise_reaches_nothing() {
        let model = TravelModel { picking_minutes: 12.0, ..TravelModel::default() };
        assert_eq!(model.reach_m(), 0.0);
    }

    #[test]
    fn coordinates_table() {
        let cases = [
            (0.0, 0.0, true),
            (90.0, 180.0, true),
            (-90.0, -180.0, true),
            (90.0001, 0.0, false),
            (0.0, -180.5, false),
            (f64::NAN, 0.0, false),
            (0.0, f64::INFINITY, false),
        ];
        for (lat, lng, ok) in cases {
            assert_eq!(valid_coordinates(lat, lng), ok, "({lat}, {lng})");
        }
    }

    #[test]
    fn distance_is_haversine() {
        // One degree of latitude is about 111.2 km.
        let d = distance_m(12.0, 77.0, 13.0, 77.0);
        assert!((d - 111_195.0).abs() < 200.0, "{d}");
    }
}
