//! Opening hours of a store, in its own time zone.
//!
//! A week of intervals per weekday (`"HH:MM"` to `"HH:MM"`, minutes of the local day; `24:00`
//! closes at midnight; an interval whose end is not after its start runs past midnight into the
//! next day). A weekday not listed is closed all day; no hours at all means always open (the
//! caller keeps `None`). Local times follow the zone's rules (the IANA database through `jiff`),
//! so summer time moves opening hours with the clocks. Pure: `now` is an argument.

use crate::Millis;

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const DAY_MIN: u32 = 24 * 60;

/// Opening intervals by weekday, as given: `(day, [(open, close)])`, day `mon` … `sun`.
pub type Days = Vec<(String, Vec<(String, String)>)>;

/// The stored form of `days`: `mon=07:00-23:00,08:00-09:00;tue=…` (days without intervals left
/// out).
pub fn to_spec(days: &Days) -> String {
    days.iter()
        .filter(|(_, iv)| !iv.is_empty())
        .map(|(d, iv)| format!("{d}={}", iv.iter().map(|(a, b)| format!("{a}-{b}")).collect::<Vec<_>>().join(",")))
        .collect::<Vec<_>>()
        .join(";")
}

/// Reads [`to_spec`]'s form back (the times are checked by [`Hours::new`]).
pub fn from_spec(spec: &str) -> Result<Days, String> {
    let mut days = Days::new();
    for part in spec.split(';').filter(|p| !p.is_empty()) {
        let (day, intervals) = part.split_once('=').ok_or_else(|| format!("bad hours {part:?}"))?;
        let mut iv = Vec::new();
        for i in intervals.split(',') {
            let (a, b) = i.split_once('-').ok_or_else(|| format!("bad interval {i:?}"))?;
            iv.push((a.to_owned(), b.to_owned()));
        }
        days.push((day.to_owned(), iv));
    }
    Ok(days)
}

/// Whether `name` is a time zone the IANA database knows.
pub fn valid_timezone(name: &str) -> bool {
    jiff::tz::TimeZone::get(name).is_ok()
}

/// Every time-zone name the database knows, sorted (what `valid_timezone` accepts, as spelled
/// by the database).
pub fn timezone_names() -> Vec<String> {
    let mut names: Vec<String> = jiff::tz::db().available().map(|n| n.as_str().to_owned()).collect();
    names.sort();
    names
}

/// A store's week.
#[derive(Debug, Clone)]
pub struct Hours {
    tz: jiff::tz::TimeZone,
    /// Open intervals per weekday (Monday first), minutes of the local day, `[start, end)`,
    /// already split at midnight.
    week: [Vec<(u32, u32)>; 7],
}

fn minutes(s: &str) -> Result<u32, String> {
    let bad = || format!("{s:?} is not HH:MM");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    let two_digits = |x: &str| x.len() == 2 && x.bytes().all(|b| b.is_ascii_digit());
    if !two_digits(h) || !two_digits(m) {
        return Err(bad());
    }
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m >= 60 || h > 24 || (h == 24 && m != 0) {
        return Err(format!("{s:?} is not a time of day"));
    }
    Ok(h * 60 + m)
}

impl Hours {
    /// From an IANA zone name and, per weekday (`mon` … `sun`), a list of `(open, close)` times.
    pub fn new(timezone: &str, days: &[(String, Vec<(String, String)>)]) -> Result<Hours, String> {
        let tz = jiff::tz::TimeZone::get(timezone).map_err(|_| format!("unknown time zone {timezone:?}"))?;
        let mut week: [Vec<(u32, u32)>; 7] = Default::default();
        for (day, intervals) in days {
            let d = DAYS.iter().position(|x| x == day).ok_or_else(|| format!("{day:?} is not one of mon … sun"))?;
            if intervals.len() > 8 {
                return Err(format!("{day}: at most 8 intervals"));
            }
            for (open, close) in intervals {
                let (a, b) = (minutes(open)?, minutes(close)?);
                if a == DAY_MIN {
                    return Err(format!("{day}: an interval cannot open at 24:00"));
                }
                if b > a {
                    week[d].push((a, b));
                } else {
                    // Past midnight: the rest of this day, then the start of the next.
                    week[d].push((a, DAY_MIN));
                    if b > 0 {
                        week[(d + 1) % 7].push((0, b));
                    }
                }
            }
        }
        for (d, w) in week.iter_mut().enumerate() {
            w.sort_unstable();
            if w.windows(2).any(|p| p[1].0 < p[0].1) {
                return Err(format!("{}: intervals overlap", DAYS[d]));
            }
        }
        Ok(Hours { tz, week })
    }

    /// The local weekday (0 = Monday) and minute of the day at `now`.
    fn local(&self, now: Millis) -> Option<(usize, u32, jiff::Zoned)> {
        let ts = jiff::Timestamp::from_millisecond(now).ok()?;
        let z = ts.to_zoned(self.tz.clone());
        let day = z.weekday().to_monday_zero_offset() as usize;
        Some((day, z.hour() as u32 * 60 + z.minute() as u32, z))
    }

    pub fn is_open(&self, now: Millis) -> bool {
        self.local(now).is_some_and(|(d, m, _)| self.week[d].iter().any(|&(a, b)| a <= m && m < b))
    }

    /// When the store next opens after `now` (None when it never does, or is open now).
    pub fn opens_at(&self, now: Millis) -> Option<Millis> {
        let (day, minute, z) = self.local(now)?;
        if self.week[day].iter().any(|&(a, b)| a <= minute && minute < b) {
            return None;
        }
        let midnight = z.start_of_day().ok()?;
        for ahead in 0..8usize {
            let d = (day + ahead) % 7;
            let first = self.week[d].iter().map(|&(a, _)| a).filter(|&a| ahead > 0 || a > minute).min();
            if let Some(a) = first {
                let date = midnight.checked_add(jiff::Span::new().days(ahead as i64)).ok()?;
                let local = date.date().at((a / 60) as i8, (a % 60) as i8, 0, 0);
                let at = local.to_zoned(self.tz.clone()).ok()?;
                return Some(at.timestamp().as_millisecond());
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listed_time_zones_are_the_valid_ones() {
        let names = timezone_names();
        assert!(names.iter().any(|n| n == "Asia/Kolkata"), "{} names", names.len());
        assert!(names.iter().all(|n| valid_timezone(n)));
        assert!(!valid_timezone("Mars/Olympus_Mons"));
    }

    fn ms(s: &str) -> Millis {
        s.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    }

    fn week(days: &[(&str, &[(&str, &str)])]) -> Vec<(String, Vec<(String, String)>)> {
        days.iter()
            .map(|(d, iv)| (d.to_string(), iv.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()))
            .collect()
    }

    #[test]
    fn open_and_next_opening_in_the_stores_zone() {
        // Bengaluru (UTC+05:30): 07:00-23:00 on weekdays, 08:00-02:00 on Saturday, Sunday closed.
        let days = week(&[
            ("mon", &[("07:00", "23:00")]),
            ("tue", &[("07:00", "23:00")]),
            ("wed", &[("07:00", "23:00")]),
            ("thu", &[("07:00", "23:00")]),
            ("fri", &[("07:00", "23:00")]),
            ("sat", &[("08:00", "02:00")]),
        ]);
        let h = Hours::new("Asia/Kolkata", &days).unwrap();
        // Monday 2026-11-23 10:00 IST is 04:30 UTC: open.
        assert!(h.is_open(ms("2026-11-23T04:30:00Z")));
        assert_eq!(h.opens_at(ms("2026-11-23T04:30:00Z")), None);
        // Monday 23:30 IST: closed, opens Tuesday 07:00 IST (01:30 UTC).
        let late = ms("2026-11-23T18:00:00Z");
        assert!(!h.is_open(late));
        assert_eq!(h.opens_at(late), Some(ms("2026-11-24T01:30:00Z")));
        // Sunday 01:00 IST is still Saturday's night: open; Sunday 03:00: closed until Monday 07:00.
        assert!(h.is_open(ms("2026-11-28T19:30:00Z")));
        let sunday = ms("2026-11-28T21:30:00Z");
        assert!(!h.is_open(sunday));
        assert_eq!(h.opens_at(sunday), Some(ms("2026-11-30T01:30:00Z")));
        // Early Monday, before 07:00: opens the same day.
        assert_eq!(h.opens_at(ms("2026-11-23T00:00:00Z")), Some(ms("2026-11-23T01:30:00Z")));
    }

    #[test]
    fn summer_time_moves_the_hours_with_the_clocks() {
        let days = week(&[("sun", &[("09:00", "17:00")])]);
        let h = Hours::new("Europe/Berlin", &days).unwrap();
        // 09:30 local: 08:30 UTC in winter, 07:30 UTC in summer.
        assert!(h.is_open(ms("2026-01-04T08:30:00Z")));
        assert!(h.is_open(ms("2026-07-05T07:30:00Z")));
        assert!(!h.is_open(ms("2026-07-05T06:30:00Z")));
    }

    #[test]
    fn the_stored_form_reads_back() {
        let days = week(&[("mon", &[("07:00", "12:00"), ("13:00", "23:00")]), ("sat", &[("08:00", "02:00")])]);
        let spec = to_spec(&days);
        assert_eq!(spec, "mon=07:00-12:00,13:00-23:00;sat=08:00-02:00");
        assert_eq!(from_spec(&spec).unwrap(), days);
        assert!(from_spec("mon:07:00").is_err());
        assert_eq!(from_spec("").unwrap(), Days::new());
    }

    #[test]
    fn bad_hours_are_refused() {
        for (tz, days) in [
            ("Mars/Olympus", week(&[])),
            ("UTC", week(&[("monday", &[("07:00", "23:00")])])),
            ("UTC", week(&[("mon", &[("7", "23:00")])])),
            ("UTC", week(&[("mon", &[("07:60", "23:00")])])),
            ("UTC", week(&[("mon", &[("25:00", "23:00")])])),
            ("UTC", week(&[("mon", &[("24:00", "23:00")])])),
            ("UTC", week(&[("mon", &[("007:00", "23:00")])])),
            ("UTC", week(&[("mon", &[("07:00", "12:00"), ("11:00", "13:00")])])),
            ("UTC", week(&[("mon", &[("22:00", "03:00")]), ("tue", &[("02:00", "09:00")])])),
        ] {
            assert!(Hours::new(tz, &days).is_err(), "{tz} {days:?}");
        }
        let never = Hours::new("UTC", &week(&[])).unwrap();
        assert!(!never.is_open(0));
        assert_eq!(never.opens_at(0), None);
        let always = Hours::new("UTC", &week(&[("mon", &[("00:00", "24:00")])])).unwrap();
        assert!(always.is_open(ms("2026-11-23T12:00:00Z")));
    }
}
