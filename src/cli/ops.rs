//! The operators' commands, `status` and `dlq`, and the plan `replay` prints. The answers come
//! from the library (`event_manager::ops`, `event_manager::replay`), which the console serves
//! too; this file only prints them.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;

use chrono::{DateTime, SecondsFormat, Utc};
use event_manager::config::Config;
use event_manager::ops::dlq::{self, DeadLetterFilter, DeadLetterSummary};
use event_manager::ops::status::{GroupStatus, StatusReader};
use event_manager::replay::PartitionPlan;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::{DlqCommand, DlqFilterArgs, StatusArgs};

/// Columns separated by two spaces; a column whose cells are all numbers (or empty, or `-`)
/// is right-aligned, as `kafka-consumer-groups.sh` prints offsets.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let columns = headers.len();
    let mut width: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    let mut numeric = vec![true; columns];
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns) {
            width[i] = width[i].max(cell.chars().count());
            if !(cell.is_empty() || cell == "-" || cell.parse::<i64>().is_ok()) {
                numeric[i] = false;
            }
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            let pad = width[i].saturating_sub(cell.chars().count());
            if numeric[i] {
                out.push_str(&" ".repeat(pad));
                out.push_str(cell);
            } else if i + 1 < columns {
                out.push_str(cell);
                out.push_str(&" ".repeat(pad));
            } else {
                out.push_str(cell);
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut out = line(&mut headers.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(
        || "-".to_owned(),
        |t| t.to_rfc3339_opts(SecondsFormat::Secs, true),
    )
}

fn number<T: ToString>(n: Option<T>) -> String {
    n.map_or_else(|| "-".to_owned(), |n| n.to_string())
}

/// The plan of a replay, in the columns of `kafka-consumer-groups.sh --reset-offsets`, with the
/// log and the lag the new position leaves.
pub(super) fn replay_plan_table(group: &str, plans: &[PartitionPlan]) -> String {
    let rows: Vec<Vec<String>> = plans
        .iter()
        .map(|p| {
            vec![
                group.to_owned(),
                p.topic.clone(),
                p.partition.to_string(),
                number(p.stored),
                p.target.to_string(),
                p.low.to_string(),
                p.high.to_string(),
                p.lag_after().to_string(),
            ]
        })
        .collect();
    table(
        &[
            "GROUP",
            "TOPIC",
            "PARTITION",
            "CURRENT-OFFSET",
            "NEW-OFFSET",
            "LOG-START-OFFSET",
            "LOG-END-OFFSET",
            "LAG-AFTER",
        ],
        &rows,
    )
}

fn status_table(status: &GroupStatus) -> String {
    let mut rows: Vec<Vec<String>> = status
        .partitions
        .iter()
        .map(|p| {
            vec![
                p.topic.clone(),
                p.partition.to_string(),
                number(p.stored_offset),
                number(p.committed_offset),
                number(p.log_start),
                number(p.log_end),
                number(p.lag),
                time(p.last_event_time),
            ]
        })
        .collect();
    let total = &status.total;
    rows.push(vec![
        format!(
            "TOTAL ({} partitions, {} behind)",
            total.partitions, total.lagging_partitions
        ),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        total.lag.to_string(),
        time(total.last_event_time),
    ]);
    format!(
        "group {} at {}\n{}",
        status.group,
        time(Some(status.read_at)),
        table(
            &[
                "TOPIC",
                "PARTITION",
                "STORED",
                "COMMITTED",
                "LOG-START",
                "LOG-END",
                "LAG",
                "LAST-EVENT",
            ],
            &rows,
        )
    )
}

/// `status`.
pub(super) async fn status(config: Config, args: StatusArgs) -> anyhow::Result<()> {
    let group = args.group.unwrap_or_else(|| config.kafka.group_id.clone());
    let store = event_manager::store::EventStore::connect(&config.database)?;
    let reader = StatusReader::new(&config.kafka, store, &group)?;
    let first = reader.read().await?;
    if !args.watch {
        if args.json {
            println!("{}", serde_json::to_string_pretty(&first)?);
        } else {
            print!("{}", status_table(&first));
        }
        return Ok(());
    }
    // Registered before the first figures are printed, so that an interrupt at any moment
    // after them ends the watch normally.
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let bars = (!args.json && std::io::stdout().is_terminal()).then(StatusBars::new);
    let mut latest = Ok(first);
    loop {
        match (&latest, &bars) {
            (Ok(status), Some(bars)) => bars.draw(status),
            (Ok(status), None) if args.json => println!("{}", serde_json::to_string(status)?),
            (Ok(status), None) => println!("{}", status_table(status)),
            (Err(e), Some(bars)) => bars.total.set_message(format!("error: {e} (retrying)")),
            (Err(e), None) => eprintln!("error: {e} (retrying)"),
        }
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            _ = tokio::time::sleep(args.interval) => {}
        }
        latest = reader.read().await;
    }
    if let Some(bars) = bars {
        bars.total.finish();
    }
    Ok(())
}

/// `status --watch` on a terminal: a bar per partition (how much of its log the group has
/// read) and a total line.
struct StatusBars {
    multi: MultiProgress,
    partitions: std::cell::RefCell<BTreeMap<(String, i32), ProgressBar>>,
    total: ProgressBar,
}

impl StatusBars {
    fn new() -> Self {
        let multi = MultiProgress::new();
        let total = multi.add(ProgressBar::new_spinner());
        total.set_style(
            ProgressStyle::with_template("{spinner} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        Self {
            multi,
            partitions: std::cell::RefCell::new(BTreeMap::new()),
            total,
        }
    }

    fn draw(&self, status: &GroupStatus) {
        let mut partitions = self.partitions.borrow_mut();
        let width = status
            .partitions
            .iter()
            .map(|p| p.topic.len() + 1 + p.partition.to_string().len())
            .max()
            .unwrap_or(0);
        for p in &status.partitions {
            let bar = partitions
                .entry((p.topic.clone(), p.partition))
                .or_insert_with(|| {
                    let bar = self.multi.insert_before(&self.total, ProgressBar::new(0));
                    bar.set_style(
                        ProgressStyle::with_template("{prefix} {bar:30} {msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                    bar
                });
            bar.set_prefix(format!(
                "{:<width$}",
                format!("{}/{}", p.topic, p.partition)
            ));
            let (start, end) = (p.log_start.unwrap_or(0), p.log_end.unwrap_or(0));
            let read = p.stored_offset.unwrap_or(start).clamp(start, end);
            bar.set_length((end - start).max(0) as u64);
            bar.set_position((read - start).max(0) as u64);
            bar.set_message(format!(
                "stored {} committed {} end {} lag {} last event {}",
                number(p.stored_offset),
                number(p.committed_offset),
                number(p.log_end),
                number(p.lag),
                time(p.last_event_time)
            ));
        }
        self.total.set_message(format!(
            "group {}: lag {} on {} of {} partitions, last event {} (read {}; Ctrl-C ends)",
            status.group,
            status.total.lag,
            status.total.lagging_partitions,
            status.total.partitions,
            time(status.total.last_event_time),
            time(Some(status.read_at)),
        ));
        self.total.tick();
    }
}

/// `--since`: a time, a date, or a period before now.
fn since(text: &str) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(period) = humantime::parse_duration(text) {
        return Ok(Utc::now() - chrono::Duration::from_std(period)?);
    }
    super::parse_time(text).map_err(|_| {
        anyhow::anyhow!(
            "--since {text:?} is not an RFC 3339 date-time, a YYYY-MM-DD date or a period such as 1h"
        )
    })
}

fn filter(args: &DlqFilterArgs, offset: Option<i64>) -> anyhow::Result<DeadLetterFilter> {
    Ok(DeadLetterFilter {
        since: args.since.as_deref().map(since).transpose()?,
        reason: args.reason.clone(),
        source_topic: args.source_topic.clone(),
        partition: match (args.partition, offset) {
            (None, Some(_)) => Some(0),
            (p, _) => p,
        },
        offset,
        limit: args.limit,
    })
}

fn letter_rows(letters: &[DeadLetterSummary], produced: Option<&[Option<i64>]>) -> String {
    let mut headers = vec![
        "PARTITION",
        "OFFSET",
        "TIME",
        "SOURCE-TOPIC",
        "SOURCE-PARTITION",
        "SOURCE-OFFSET",
        "REASON",
    ];
    if produced.is_some() {
        headers.push("NEW-OFFSET");
    } else {
        headers.push("DETAIL");
    }
    let rows: Vec<Vec<String>> = letters
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let last = match produced {
                Some(offsets) => number(offsets.get(i).copied().flatten()),
                None => l.detail.clone().unwrap_or_else(|| "-".into()),
            };
            vec![
                l.partition.to_string(),
                l.offset.to_string(),
                time(l.time),
                l.source_topic.clone().unwrap_or_else(|| "-".into()),
                number(l.source_partition),
                number(l.source_offset),
                l.reason.clone().unwrap_or_else(|| "-".into()),
                last,
            ]
        })
        .collect();
    table(&headers, &rows)
}

/// `dlq list | show | redrive`.
pub(super) async fn dlq(config: Config, command: DlqCommand) -> anyhow::Result<()> {
    match command {
        DlqCommand::List(args) => {
            let args = args.filter;
            let found = dlq::list(&config.kafka, &args.topic, &filter(&args, None)?).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&found)?);
                return Ok(());
            }
            print!("{}", letter_rows(&found.letters, None));
            println!(
                "{} of {} matching dead letters shown ({} read from {})",
                found.letters.len(),
                found.matched,
                found.scanned,
                found.topic
            );
            let reasons: Vec<Vec<String>> = found
                .by_reason
                .iter()
                .map(|(reason, n)| vec![reason.clone(), n.to_string()])
                .collect();
            print!("{}", table(&["REASON", "COUNT"], &reasons));
        }
        DlqCommand::Show(args) => {
            let letter = dlq::show(
                &config.kafka,
                &args.topic,
                args.partition,
                args.offset,
                args.body,
            )
            .await?;
            if args.json {
                let mut json = serde_json::to_value(&letter)?;
                if let (Some(body), Some(object)) = (&letter.body, json.as_object_mut()) {
                    use base64::Engine as _;
                    object.insert(
                        "body_base64".into(),
                        base64::engine::general_purpose::STANDARD
                            .encode(body)
                            .into(),
                    );
                }
                println!("{}", serde_json::to_string_pretty(&json)?);
                return Ok(());
            }
            let s = &letter.summary;
            let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
            println!("dead letter {}/{}/{}", letter.topic, s.partition, s.offset);
            println!("time:     {}", time(s.time));
            println!(
                "source:   {}/{}/{}",
                or_dash(&s.source_topic),
                number(s.source_partition),
                number(s.source_offset)
            );
            println!("reason:   {}", or_dash(&s.reason));
            println!("detail:   {}", or_dash(&s.detail));
            println!("format:   {}", or_dash(&s.format));
            if let Some(from) = &s.redriven_from {
                println!("redriven from: {from}");
            }
            println!("key:      {}", letter.key.as_deref().unwrap_or("(none)"));
            println!("headers:");
            for h in &letter.headers {
                println!("  {}: {}", h.key, h.value.as_deref().unwrap_or("(null)"));
            }
            match &letter.body {
                None => println!(
                    "body:     {} bytes, not shown (add --body; it may hold patient data)",
                    letter.body_bytes
                ),
                Some(body) => {
                    println!("body:     {} bytes", letter.body_bytes);
                    match std::str::from_utf8(body) {
                        Ok(text) => println!("{text}"),
                        Err(_) => print!("{}", hex_dump(body)),
                    }
                }
            }
        }
        DlqCommand::Redrive(args) => {
            let chosen = filter(&args.filter, args.offset)?;
            let report =
                dlq::redrive(&config.kafka, &args.filter.topic, &chosen, args.execute).await?;
            if args.filter.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
                return Ok(());
            }
            let letters: Vec<DeadLetterSummary> =
                report.items.iter().map(|i| i.letter.clone()).collect();
            let produced: Vec<Option<i64>> =
                report.items.iter().map(|i| i.produced_offset).collect();
            print!("{}", letter_rows(&letters, Some(produced.as_slice())));
            for skip in &report.skipped {
                println!(
                    "skipped {}/{}: {}",
                    skip.letter.partition, skip.letter.offset, skip.why
                );
            }
            if report.executed {
                println!(
                    "sent {} dead letters back to their source partitions ({} skipped)",
                    report.items.len(),
                    report.skipped.len()
                );
            } else {
                println!(
                    "dry run: {} dead letters would be sent back ({} skipped); nothing sent (add --execute)",
                    report.items.len(),
                    report.skipped.len()
                );
            }
        }
    }
    Ok(())
}

/// 16 bytes a line: offset, hex, and the printable ASCII.
fn hex_dump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (i, chunk) in bytes.chunks(16).enumerate() {
        let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
        let text: String = chunk
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        out.push_str(&format!("{:08x}  {:<47}  {text}\n", i * 16, hex.join(" ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_numbers_right_and_text_left() {
        let out = table(
            &["TOPIC", "PARTITION", "LAG"],
            &[
                vec!["a".into(), "0".into(), "12".into()],
                vec!["long-topic".into(), "10".into(), "-".into()],
            ],
        );
        assert_eq!(
            out,
            "TOPIC       PARTITION  LAG\n\
             a                   0   12\n\
             long-topic         10    -\n"
        );
    }

    #[test]
    fn hex_dumps_show_offsets_bytes_and_text() {
        let bytes: Vec<u8> = (0x3e..0x50).collect();
        assert_eq!(
            hex_dump(&bytes),
            format!(
                "00000000  {}  >?@ABCDEFGHIJKLM\n00000010  {:<47}  NO\n",
                "3e 3f 40 41 42 43 44 45 46 47 48 49 4a 4b 4c 4d", "4e 4f"
            )
        );
    }
}
