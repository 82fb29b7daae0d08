//! Sample data for the NBA example pipeline: a season with off-days, one date whose feed is
//! missing, and one date whose feed holds a corrupt row (so the raw run fails).
//!
//! The season is deterministic for a seed, so demos, tests and benchmarks see the same data.

use chrono::{Datelike, NaiveDate, Weekday};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rusqlite::params;

use crate::backends::sqlite::Sqlite;
use crate::dates::days;
use crate::warehouse::WarehouseError;

pub const TEAMS: [&str; 8] = ["ATL", "BOS", "CHI", "DAL", "DEN", "LAL", "MIA", "NYK"];
pub const PLAYERS_PER_TEAM: usize = 5;

/// What season to generate.
#[derive(Debug, Clone)]
pub struct SeasonSpec {
    pub start: NaiveDate,
    pub days: u32,
    pub seed: u64,
    /// Game days whose feed never arrived (the raw run finds nothing).
    pub missing_feed: Vec<NaiveDate>,
    /// Game days whose feed has a row without a player (the raw run fails).
    pub corrupt_feed: Vec<NaiveDate>,
}

impl SeasonSpec {
    /// `days` days from `start`; the feed of the 5th game day is missing and the feed of the
    /// 9th game day is corrupt (when the season has that many).
    pub fn new(start: NaiveDate, days: u32) -> SeasonSpec {
        let mut spec = SeasonSpec {
            start,
            days,
            seed: 2025,
            missing_feed: Vec::new(),
            corrupt_feed: Vec::new(),
        };
        let game_days = spec.game_days();
        spec.missing_feed = game_days.get(4).copied().into_iter().collect();
        spec.corrupt_feed = game_days.get(8).copied().into_iter().collect();
        spec
    }

    pub fn end(&self) -> NaiveDate {
        self.start
            .checked_add_signed(chrono::Duration::days(i64::from(self.days.max(1)) - 1))
            .unwrap_or(NaiveDate::MAX)
    }

    /// Days with games: every day but Thursdays (the league's off-day here).
    pub fn game_days(&self) -> Vec<NaiveDate> {
        days(self.start, self.end())
            .filter(|d| is_game_day(*d))
            .collect()
    }
}

pub fn is_game_day(d: NaiveDate) -> bool {
    d.weekday() != Weekday::Thu
}

fn player(team: &str, i: usize) -> String {
    format!("{team}-{:02}", i + 1)
}

/// Write the schedule and the feed into SQLite (tables from the pipeline's `setup`).
/// Existing sample rows in the range are replaced.
pub async fn generate(db: &Sqlite, spec: &SeasonSpec) -> Result<SampleSummary, WarehouseError> {
    let spec = spec.clone();
    db.with_connection(move |c| {
        let tx = c.transaction()?;
        let from = spec.start.to_string();
        let to = spec.end().to_string();
        tx.execute(
            "DELETE FROM team_schedule WHERE game_date BETWEEN ?1 AND ?2",
            params![from, to],
        )?;
        tx.execute(
            "DELETE FROM source_player_boxscores WHERE game_date BETWEEN ?1 AND ?2",
            params![from, to],
        )?;
        let mut rng = StdRng::seed_from_u64(spec.seed);
        let mut summary = SampleSummary::default();
        {
            let mut sched = tx.prepare(
                "INSERT INTO team_schedule (game_date, game_id, team, opponent) VALUES (?1, ?2, ?3, ?4)",
            )?;
            let mut feed = tx.prepare(
                "INSERT INTO source_player_boxscores \
                 (game_date, game_id, player, team, points, rebounds, assists, minutes) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for day in days(spec.start, spec.end()) {
                if !is_game_day(day) {
                    summary.off_days += 1;
                    continue;
                }
                summary.game_days += 1;
                let date = day.to_string();
                let mut teams = TEAMS.to_vec();
                teams.shuffle(&mut rng);
                // Box scores draw from their own per-day generator, so the schedule does not
                // depend on which feeds are missing (`repair` regenerates the same season).
                let mut scores =
                    StdRng::seed_from_u64(spec.seed ^ (u64::from(day.num_days_from_ce() as u32) << 20));
                // Two games a day: each team plays about every other day.
                for (g, pair) in teams.chunks(2).take(2).enumerate() {
                    let (home, away) = (pair[0], pair[1]);
                    let game_id = format!("{}-{g}", day.format("%Y%m%d"));
                    sched.execute(params![date, game_id, home, away])?;
                    sched.execute(params![date, game_id, away, home])?;
                    summary.games += 1;
                    if spec.missing_feed.contains(&day) {
                        continue;
                    }
                    for team in [home, away] {
                        for i in 0..PLAYERS_PER_TEAM {
                            let minutes: f64 = scores.random_range(12.0..40.0);
                            let name = if spec.corrupt_feed.contains(&day) && i == 0 {
                                None
                            } else {
                                Some(player(team, i))
                            };
                            feed.execute(params![
                                date,
                                game_id,
                                name,
                                team,
                                scores.random_range(0..36),
                                scores.random_range(0..14),
                                scores.random_range(0..11),
                                (minutes * 10.0).round() / 10.0,
                            ])?;
                            summary.box_scores += 1;
                        }
                    }
                }
            }
        }
        tx.commit()?;
        Ok(summary)
    })
    .await
}

/// The late feed arrives and the corrupt row is corrected: after this, every game day of
/// the spec has a clean feed.
pub async fn repair(db: &Sqlite, spec: &SeasonSpec) -> Result<(), WarehouseError> {
    let mut clean = spec.clone();
    clean.missing_feed.clear();
    clean.corrupt_feed.clear();
    generate(db, &clean).await.map(|_| ())
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SampleSummary {
    pub game_days: u32,
    pub off_days: u32,
    pub games: u32,
    pub box_scores: u32,
}
