//! `mosmon`: the classic openMosix cluster monitor. A live terminal chart
//! with one vertical bar per node, of load, speed, memory, raw memory or
//! utilisation, as this node's daemon sees the cluster.
//!
//! The drawing is pure: [`Screen`] turns a [`ClusterView`], a mode, a scroll
//! offset and a terminal size into cells, so it is tested against ratatui's
//! `TestBackend`; [`run`] only wires it to the terminal, the keyboard and a
//! thread that asks the daemon once per interval.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::{ArgGroup, Args};
use omx_mfs::wire::{ClusterView, LoadReport, NodeState, NodeView};
use ratatui::buffer::Buffer;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::widgets::Widget;

use crate::cli::ConfigArg;
use crate::status;

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("mode").args(["load", "speed", "memory", "raw_memory", "util"])))]
pub struct MosmonArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Start with the load of each node (the default).
    #[arg(short = 'l', long)]
    pub load: bool,
    /// Start with the speed of each node's CPUs.
    #[arg(short = 's', long)]
    pub speed: bool,
    /// Start with used and total memory (page cache counted as free).
    #[arg(short = 'm', long)]
    pub memory: bool,
    /// Start with raw used and total memory (page cache counted as used).
    #[arg(short = 'r', long = "raw-memory")]
    pub raw_memory: bool,
    /// Start with CPU utilisation.
    #[arg(short = 'u', long = "util")]
    pub util: bool,
    /// Seconds between two looks at the cluster.
    #[arg(short = 't', long, value_name = "SECONDS", default_value = "1", value_parser = parse_interval)]
    pub interval: f64,
}

fn parse_interval(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if (0.1..=3600.0).contains(&s) => Ok(s),
        _ => Err(format!(
            "`{text}` is not a number of seconds between 0.1 and 3600"
        )),
    }
}

impl MosmonArgs {
    fn mode(&self) -> Mode {
        if self.speed {
            Mode::Speed
        } else if self.memory {
            Mode::Memory
        } else if self.raw_memory {
            Mode::RawMemory
        } else if self.util {
            Mode::Util
        } else {
            Mode::Load
        }
    }
}

pub fn run(args: MosmonArgs) -> anyhow::Result<ExitCode> {
    if !std::io::stdout().is_terminal() {
        anyhow::bail!(
            "standard output is not a terminal, and the live charts need one: \
             for a one-off view use `omx status` (or `omx status --json`)"
        );
    }
    let mut app = App::new(args.mode());
    let interval = Duration::from_secs_f64(args.interval);
    let updates = spawn_fetcher(args.config.config, interval);
    let mut terminal = match ratatui::try_init() {
        Ok(terminal) => terminal,
        Err(e) => {
            ratatui::restore();
            return Err(anyhow::Error::new(e).context("cannot take over the terminal"));
        }
    };
    let result = app.run(&mut terminal, &updates);
    ratatui::restore();
    result.map(|()| ExitCode::SUCCESS)
}

/// Asks the daemon every `interval`, on its own thread so that a slow
/// daemon never freezes the keyboard.
fn spawn_fetcher(
    config: PathBuf,
    interval: Duration,
) -> mpsc::Receiver<Result<ClusterView, String>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        loop {
            let answer = status::fetch(&config).map_err(|e| format!("{e:#}"));
            if tx.send(answer).is_err() {
                return;
            }
            std::thread::sleep(interval);
        }
    });
    rx
}

/// What the bars show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Load,
    Speed,
    Memory,
    RawMemory,
    Util,
}

impl Mode {
    pub fn title(self) -> &'static str {
        match self {
            Mode::Load => "Load",
            Mode::Speed => "Speed",
            Mode::Memory => "Memory",
            Mode::RawMemory => "Raw memory",
            Mode::Util => "Utilisation",
        }
    }

    fn explanation(self) -> &'static str {
        match self {
            Mode::Load => "runnable processes x100 per CPU, by speed (100: one busy reference CPU)",
            Mode::Speed => "speed of one CPU (10000: the reference machine)",
            Mode::Memory => "memory in use (bar) of total (shade); page cache counts as free",
            Mode::RawMemory => "memory in use (bar) of total (shade); page cache counts as used",
            Mode::Util => "CPU utilisation over the last sample, % of all the node's CPUs",
        }
    }

    /// The height of a node's bar and, for memory, of its capacity.
    fn measure(self, load: &LoadReport) -> (f64, Option<f64>) {
        let total = load.mem_total as f64;
        match self {
            Mode::Load => (f64::from(load.load), None),
            Mode::Speed => (f64::from(load.speed), None),
            Mode::Memory => (
                load.mem_total.saturating_sub(load.mem_free) as f64,
                Some(total),
            ),
            Mode::RawMemory => (
                load.mem_total.saturating_sub(load.mem_raw_free) as f64,
                Some(total),
            ),
            Mode::Util => (f64::from(load.util_permille) / 10.0, None),
        }
    }

    /// The top of the scale, for the largest figure shown.
    fn scale(self, largest: f64) -> f64 {
        match self {
            Mode::Load => nice_ceiling(largest.max(100.0)),
            Mode::Speed => nice_ceiling(largest.max(1.0)),
            Mode::Memory | Mode::RawMemory => largest.max(1.0),
            Mode::Util => 100.0,
        }
    }

    fn format(self, value: f64) -> String {
        match self {
            Mode::Load | Mode::Speed => format!("{value:.0}"),
            Mode::Memory | Mode::RawMemory => crate::status::human_bytes_short(value),
            Mode::Util => format!("{value:.0}%"),
        }
    }
}

/// The smallest of 1, 2, 2.5 and 5 times a power of ten that is at least
/// `value`.
fn nice_ceiling(value: f64) -> f64 {
    let mut power = 1.0;
    while power * 10.0 < value {
        power *= 10.0;
    }
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|v| *v >= value)
        .unwrap_or(power * 10.0)
}

/// Columns left of the bars: the scale's figures and the axis.
const AXIS_WIDTH: u16 = 7;
/// Rows that are not bars: title, the row above the bars (for the tallest
/// bar's figure), x axis, node numbers, status and keys.
const FRAME_ROWS: u16 = 6;
const MIN_COLUMN: u16 = 4;
const MAX_COLUMN: u16 = 10;

/// How the nodes share the width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Columns {
    /// Width of one node's column (bar and gap).
    pub width: u16,
    pub bar: u16,
    /// Nodes that fit side by side.
    pub fit: usize,
}

impl Columns {
    pub fn for_width(nodes: usize, width: u16) -> Columns {
        let room = width.saturating_sub(AXIS_WIDTH + 1);
        let per_node = room / u16::try_from(nodes.max(1)).unwrap_or(u16::MAX);
        let column = per_node.clamp(MIN_COLUMN, MAX_COLUMN);
        let bar = if column >= 6 { column - 2 } else { column - 1 };
        Columns {
            width: column,
            bar,
            fit: usize::from((room / column).max(1)),
        }
    }

    /// The largest useful scroll offset.
    pub fn max_scroll(self, nodes: usize) -> usize {
        nodes.saturating_sub(self.fit)
    }
}

/// One frame of the monitor: everything drawn, and nothing else.
pub struct Screen<'a> {
    pub view: Option<&'a ClusterView>,
    pub mode: Mode,
    /// Index of the first node shown.
    pub scroll: usize,
    /// Why the daemon could not be asked, if it could not.
    pub problem: Option<&'a str>,
    pub help: bool,
}

const BAR_STYLE: Style = Style::new().fg(Color::Green);
const LOCAL_BAR_STYLE: Style = Style::new().fg(Color::Cyan);
const CAPACITY_STYLE: Style = Style::new().fg(Color::DarkGray);
const DOWN_STYLE: Style = Style::new().fg(Color::Red).add_modifier(Modifier::BOLD);
const UNKNOWN_STYLE: Style = Style::new().fg(Color::Yellow);
const AXIS_STYLE: Style = Style::new().fg(Color::Gray);
const TITLE_STYLE: Style = Style::new().add_modifier(Modifier::REVERSED);
const KEYS_STYLE: Style = Style::new().fg(Color::DarkGray);
const PROBLEM_STYLE: Style = Style::new().fg(Color::Red);
const EIGHTHS: [&str; 8] = [" ", "▁", "▂", "▃", "▄", "▅", "▆", "▇"];

const KEYS: &str =
    "l load  s speed  m memory  r raw mem  u util  \u{2190}\u{2192} scroll  ? help  q quit";

impl Widget for &Screen<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        if area.width < AXIS_WIDTH + 1 + MIN_COLUMN || area.height < FRAME_ROWS + 3 {
            put(buf, area, 0, 0, "mosmon: terminal too small", Style::new());
            return;
        }
        let nodes = self.nodes();
        let chart_rows = area.height - FRAME_ROWS;
        let axis_row = 2 + chart_rows;
        let label_row = axis_row + 1;
        let columns = Columns::for_width(nodes.len(), area.width);
        let scroll = self.scroll.min(columns.max_scroll(nodes.len()));
        let shown = &nodes[scroll..nodes.len().min(scroll + columns.fit)];

        self.title(buf, area, nodes.len());
        // Scale: the largest figure of all nodes, shown or not, so that
        // scrolling keeps the bars comparable.
        let largest = nodes
            .iter()
            .filter_map(|n| self.figures(n))
            .map(|(value, capacity)| capacity.unwrap_or(value).max(value))
            .fold(0.0, f64::max);
        let top = self.mode.scale(largest);
        self.axis(buf, area, chart_rows, top);

        for (i, node) in shown.iter().enumerate() {
            let x = AXIS_WIDTH + 1 + u16::try_from(i).unwrap_or(0) * columns.width;
            self.bar(buf, area, node, x, columns.bar, chart_rows, top);
            let local = node.state == NodeState::Local;
            let label = format!("{}{}", node.node, if local { "*" } else { "" });
            let style = match node.state {
                NodeState::Down => DOWN_STYLE,
                NodeState::Local => Style::new().add_modifier(Modifier::BOLD),
                _ => Style::new(),
            };
            put_centred(buf, area, x, columns.bar, label_row, &label, style);
        }
        if scroll > 0 {
            put(buf, area, AXIS_WIDTH, axis_row, "\u{25c0}", Style::new());
        }
        if scroll + shown.len() < nodes.len() {
            put(
                buf,
                area,
                area.width - 1,
                axis_row,
                "\u{25b6}",
                Style::new(),
            );
        }

        let status_row = label_row + 1;
        let (status, style) = self.status(area.width, nodes.len(), scroll, shown.len());
        put(buf, area, 0, status_row, &status, style);
        put(buf, area, 0, status_row + 1, KEYS, KEYS_STYLE);
    }
}

impl Screen<'_> {
    fn nodes(&self) -> Vec<&NodeView> {
        let mut nodes: Vec<&NodeView> = self.view.map_or(Vec::new(), |v| v.nodes.iter().collect());
        nodes.sort_by_key(|n| n.node);
        nodes
    }

    /// The bar and capacity of a node that is up (or this node).
    fn figures(&self, node: &NodeView) -> Option<(f64, Option<f64>)> {
        match node.state {
            NodeState::Local | NodeState::Up => node.load.as_ref().map(|l| self.mode.measure(l)),
            NodeState::Down | NodeState::Unknown => None,
        }
    }

    fn title(&self, buf: &mut Buffer, area: Rect, count: usize) {
        let mut title = format!(" omx mosmon \u{2502} {}", self.mode.title());
        if let Some(view) = self.view {
            let up = view
                .nodes
                .iter()
                .filter(|n| matches!(n.state, NodeState::Local | NodeState::Up))
                .count();
            let down = view
                .nodes
                .iter()
                .filter(|n| n.state == NodeState::Down)
                .count();
            title += &format!(
                " \u{2502} node {}'s view: {count} nodes, {up} up",
                view.this_node
            );
            if down > 0 {
                title += &format!(", {down} down");
            }
        }
        let line = format!("{title:<width$}", width = usize::from(area.width));
        put(buf, area, 0, 0, &line, TITLE_STYLE);
    }

    /// The y axis with its figures, and the x axis.
    fn axis(&self, buf: &mut Buffer, area: Rect, rows: u16, top: f64) {
        let marks = if rows >= 8 { 4 } else { 2 };
        for row in 0..rows {
            put(buf, area, AXIS_WIDTH - 1, 2 + row, "\u{2502}", AXIS_STYLE);
        }
        for k in 1..=marks {
            let height = f64::from(rows) * f64::from(k) / f64::from(marks);
            let row = 2 + rows - height.round() as u16;
            let figure = self.mode.format(top * f64::from(k) / f64::from(marks));
            let text = format!(
                "{figure:>width$}\u{2524}",
                width = usize::from(AXIS_WIDTH - 1)
            );
            put(buf, area, 0, row, &text, AXIS_STYLE);
        }
        let axis_row = 2 + rows;
        let zero = format!(
            "{:>width$}\u{2514}",
            self.mode.format(0.0),
            width = usize::from(AXIS_WIDTH - 1)
        );
        put(buf, area, 0, axis_row, &zero, AXIS_STYLE);
        let line = "\u{2500}".repeat(usize::from(area.width - AXIS_WIDTH));
        put(buf, area, AXIS_WIDTH, axis_row, &line, AXIS_STYLE);
    }

    #[allow(clippy::too_many_arguments)]
    fn bar(
        &self,
        buf: &mut Buffer,
        area: Rect,
        node: &NodeView,
        x: u16,
        width: u16,
        rows: u16,
        top: f64,
    ) {
        let bottom = 2 + rows - 1;
        match node.state {
            NodeState::Down => {
                if width >= 4 {
                    put_centred(buf, area, x, width, bottom, "DOWN", DOWN_STYLE);
                } else {
                    for (i, letter) in ["D", "O", "W", "N"].iter().enumerate() {
                        let row = (bottom + 1).saturating_sub(4 - i as u16).max(2);
                        put(buf, area, x + width / 2, row, letter, DOWN_STYLE);
                    }
                }
                return;
            }
            NodeState::Unknown => {
                put_centred(buf, area, x, width, bottom, "?", UNKNOWN_STYLE);
                return;
            }
            NodeState::Local | NodeState::Up => {}
        }
        let Some((value, capacity)) = self.figures(node) else {
            put_centred(buf, area, x, width, bottom, "?", UNKNOWN_STYLE);
            return;
        };
        let eighths = |v: f64| -> u32 {
            let e = (v / top).clamp(0.0, 1.0) * f64::from(rows) * 8.0;
            let e = e.round() as u32;
            // Anything above zero shows, however small.
            if v > 0.0 { e.max(1) } else { e }
        };
        let filled = eighths(value);
        let style = if node.state == NodeState::Local {
            LOCAL_BAR_STYLE
        } else {
            BAR_STYLE
        };
        let full_rows = filled / 8;
        for r in 0..full_rows {
            fill(buf, area, x, width, bottom - r as u16, "\u{2588}", style);
        }
        let mut used_rows = full_rows;
        if filled % 8 > 0 {
            fill(
                buf,
                area,
                x,
                width,
                bottom - full_rows as u16,
                EIGHTHS[(filled % 8) as usize],
                style,
            );
            used_rows += 1;
        }
        if let Some(capacity) = capacity {
            let capacity_rows = eighths(capacity).div_ceil(8);
            for r in used_rows..capacity_rows {
                fill(
                    buf,
                    area,
                    x,
                    width,
                    bottom - r as u16,
                    "\u{2591}",
                    CAPACITY_STYLE,
                );
            }
        }
        // The figure just above the bar (over the shade), where it fits.
        let figure = self.mode.format(value);
        if figure.chars().count() <= usize::from(width) {
            let row = (bottom + 1).saturating_sub(used_rows as u16 + 1).max(1);
            put_centred(buf, area, x, width, row, &figure, Style::new());
        }
    }

    fn status(&self, width: u16, count: usize, scroll: usize, shown: usize) -> (String, Style) {
        if let Some(problem) = self.problem {
            let stale = if self.view.is_some() {
                " (showing the last answer)"
            } else {
                ""
            };
            return (
                format!("cannot ask the daemon, retrying{stale}: {problem}"),
                PROBLEM_STYLE,
            );
        }
        let Some(view) = self.view else {
            return ("asking the daemon...".to_string(), Style::new());
        };
        if self.help {
            return (
                format!("{}: {}", self.mode.title(), self.mode.explanation()),
                Style::new(),
            );
        }
        let mut parts = Vec::new();
        if shown < count {
            parts.push(format!(
                "nodes {}-{} of {count} (\u{2190}\u{2192} for more)",
                scroll + 1,
                scroll + shown
            ));
        }
        parts.push("* this node".to_string());
        parts.push(format!(
            "DOWN: no news for {:.1} s",
            view.down_after_ms as f64 / 1000.0
        ));
        parts.push("?: never heard of".to_string());
        // As many as fit.
        let mut status = String::new();
        for part in parts {
            let joined = if status.is_empty() {
                part
            } else {
                format!("{status}   {part}")
            };
            if joined.chars().count() > usize::from(width) {
                break;
            }
            status = joined;
        }
        (status, Style::new())
    }
}

/// Writes `text` at (`x`, `y`) of `area`, cut at its right edge.
fn put(buf: &mut Buffer, area: Rect, x: u16, y: u16, text: &str, style: Style) {
    if x >= area.width || y >= area.height {
        return;
    }
    buf.set_stringn(
        area.x + x,
        area.y + y,
        text,
        usize::from(area.width - x),
        style,
    );
}

/// Writes `text` centred over the `width` columns from `x`.
fn put_centred(buf: &mut Buffer, area: Rect, x: u16, width: u16, y: u16, text: &str, style: Style) {
    let len = u16::try_from(text.chars().count()).unwrap_or(u16::MAX);
    let start = (x + width / 2).saturating_sub(len / 2);
    put(buf, area, start, y, text, style);
}

fn fill(buf: &mut Buffer, area: Rect, x: u16, width: u16, y: u16, symbol: &str, style: Style) {
    put(buf, area, x, y, &symbol.repeat(usize::from(width)), style);
}

/// The monitor's state between frames.
struct App {
    mode: Mode,
    scroll: usize,
    help: bool,
    view: Option<ClusterView>,
    problem: Option<String>,
    /// The width of the last frame, for scrolling by pages.
    width: u16,
}

enum Step {
    Redraw,
    Nothing,
    Quit,
}

impl App {
    fn new(mode: Mode) -> App {
        App {
            mode,
            scroll: 0,
            help: false,
            view: None,
            problem: None,
            width: 80,
        }
    }

    fn screen(&self) -> Screen<'_> {
        Screen {
            view: self.view.as_ref(),
            mode: self.mode,
            scroll: self.scroll,
            problem: self.problem.as_deref(),
            help: self.help,
        }
    }

    fn run(
        &mut self,
        terminal: &mut ratatui::DefaultTerminal,
        updates: &mpsc::Receiver<Result<ClusterView, String>>,
    ) -> anyhow::Result<()> {
        let mut redraw = true;
        let mut last_draw = Instant::now();
        loop {
            if redraw || last_draw.elapsed() > Duration::from_secs(1) {
                terminal.draw(|frame| {
                    self.width = frame.area().width;
                    frame.render_widget(&self.screen(), frame.area());
                })?;
                last_draw = Instant::now();
                redraw = false;
            }
            if event::poll(Duration::from_millis(100))? {
                match event::read()? {
                    Event::Key(key) if key.kind != KeyEventKind::Release => match self.key(key) {
                        Step::Quit => return Ok(()),
                        Step::Redraw => redraw = true,
                        Step::Nothing => {}
                    },
                    Event::Resize(..) => redraw = true,
                    _ => {}
                }
            }
            while let Ok(answer) = updates.try_recv() {
                match answer {
                    Ok(view) => {
                        self.view = Some(view);
                        self.problem = None;
                    }
                    Err(problem) => self.problem = Some(problem),
                }
                redraw = true;
            }
        }
    }

    fn key(&mut self, key: KeyEvent) -> Step {
        let count = self.view.as_ref().map_or(0, |v| v.nodes.len());
        let columns = Columns::for_width(count, self.width);
        let max_scroll = columns.max_scroll(count);
        self.scroll = self.scroll.min(max_scroll);
        match key.code {
            KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                return Step::Quit;
            }
            KeyCode::Char('q' | 'Q') | KeyCode::Esc => return Step::Quit,
            KeyCode::Char('l') => self.mode = Mode::Load,
            KeyCode::Char('s') => self.mode = Mode::Speed,
            KeyCode::Char('m') => self.mode = Mode::Memory,
            KeyCode::Char('r') => self.mode = Mode::RawMemory,
            KeyCode::Char('u') => self.mode = Mode::Util,
            KeyCode::Char('h' | '?') => self.help = !self.help,
            KeyCode::Left => self.scroll = self.scroll.saturating_sub(1),
            KeyCode::Right => self.scroll = (self.scroll + 1).min(max_scroll),
            KeyCode::PageUp => self.scroll = self.scroll.saturating_sub(columns.fit),
            KeyCode::PageDown => self.scroll = (self.scroll + columns.fit).min(max_scroll),
            KeyCode::Home => self.scroll = 0,
            KeyCode::End => self.scroll = max_scroll,
            _ => return Step::Nothing,
        }
        Step::Redraw
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    fn node(id: u16, state: NodeState, load: u32) -> NodeView {
        NodeView {
            node: id,
            address: format!("10.0.0.{id}"),
            state,
            age_ms: Some(100),
            load: matches!(state, NodeState::Local | NodeState::Up).then(|| LoadReport {
                load,
                speed: 10_000 + u32::from(id) * 1000,
                cpus: 2,
                util_permille: (load * 5).min(1000) as u16,
                mem_total: 4 << 30,
                mem_free: 3 << 30,
                mem_raw_free: 1 << 30,
                ..LoadReport::default()
            }),
        }
    }

    fn view(nodes: Vec<NodeView>) -> ClusterView {
        ClusterView {
            this_node: 1,
            gossip_interval_ms: 1000,
            down_after_ms: 10_000,
            nodes,
            away: Vec::new(),
            guests: Vec::new(),
        }
    }

    fn draw(screen: &Screen<'_>, width: u16, height: u16) -> Vec<String> {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal
            .draw(|frame| frame.render_widget(screen, frame.area()))
            .unwrap();
        let buffer = terminal.backend().buffer();
        (0..height)
            .map(|y| (0..width).map(|x| buffer[(x, y)].symbol()).collect())
            .collect()
    }

    fn screen(view: &ClusterView, mode: Mode, scroll: usize) -> Screen<'_> {
        Screen {
            view: Some(view),
            mode,
            scroll,
            problem: None,
            help: false,
        }
    }

    /// The row of node numbers: the one under the x axis.
    fn label_row(lines: &[String]) -> usize {
        lines.iter().position(|l| l.contains('\u{2514}')).unwrap() + 1
    }

    /// Height of the bar above `node`'s number, in cells.
    fn bar_height(lines: &[String], node: u16) -> usize {
        let labels = label_row(lines);
        let row: Vec<char> = lines[labels].chars().collect();
        let text = lines[labels].clone();
        let number = node.to_string();
        let start = text
            .split(' ')
            .scan(0, |pos, word| {
                let at = *pos;
                *pos += word.chars().count() + 1;
                Some((at, word))
            })
            .find(|(_, w)| w.trim_end_matches('*') == number)
            .map(|(at, _)| at)
            .unwrap_or_else(|| panic!("node {node} not under the bars:\n{}", lines.join("\n")));
        assert!(start < row.len());
        (0..labels - 1)
            .filter(|y| {
                let c = lines[*y].chars().nth(start).unwrap();
                "\u{2588}\u{2581}\u{2582}\u{2583}\u{2584}\u{2585}\u{2586}\u{2587}".contains(c)
            })
            .count()
    }

    #[test]
    fn shows_every_node_number_under_its_bar_and_marks_this_node() {
        let v = view(vec![
            node(1, NodeState::Local, 50),
            node(2, NodeState::Up, 100),
            node(3, NodeState::Up, 200),
            node(4, NodeState::Up, 0),
        ]);
        let lines = draw(&screen(&v, Mode::Load, 0), 80, 24);
        let text = lines.join("\n");
        assert!(lines[0].contains("Load"), "{text}");
        assert!(lines[0].contains("node 1's view: 4 nodes, 4 up"), "{text}");
        let labels = &lines[label_row(&lines)];
        for n in ["1*", "2", "3", "4"] {
            assert!(labels.split_whitespace().any(|w| w == n), "{n}: {text}");
        }
        assert!(lines[23].contains("q quit"), "{text}");
        // A more loaded node has a taller bar; an idle one none.
        let heights: Vec<usize> = (1..=4).map(|n| bar_height(&lines, n)).collect();
        assert!(
            heights[2] > heights[1] && heights[1] > heights[0],
            "{heights:?}\n{text}"
        );
        assert_eq!(heights[3], 0, "{text}");
        // The scale reaches the largest load (200).
        assert!(text.contains("200\u{2524}"), "{text}");
    }

    #[test]
    fn down_and_unknown_nodes_say_so_instead_of_a_bar() {
        let v = view(vec![
            node(1, NodeState::Local, 50),
            node(2, NodeState::Down, 0),
            node(3, NodeState::Unknown, 0),
        ]);
        let lines = draw(&screen(&v, Mode::Speed, 0), 80, 24);
        let text = lines.join("\n");
        assert!(text.contains("DOWN"), "{text}");
        assert!(lines[0].contains("1 down"), "{text}");
        let bottom = label_row(&lines) - 2;
        assert!(lines[bottom].contains('?'), "{text}");
        assert_eq!(bar_height(&lines, 2), 0);
        assert_eq!(bar_height(&lines, 3), 0);
        assert!(bar_height(&lines, 1) > 0);
    }

    #[test]
    fn many_nodes_fit_at_80_columns_and_scroll_for_the_rest() {
        let nodes: Vec<NodeView> = (1..=40)
            .map(|i| {
                node(
                    i,
                    if i == 1 {
                        NodeState::Local
                    } else {
                        NodeState::Up
                    },
                    u32::from(i) * 10,
                )
            })
            .collect();
        let v = view(nodes);
        let columns = Columns::for_width(40, 80);
        assert!(columns.fit >= 15, "{columns:?}");
        let lines = draw(&screen(&v, Mode::Load, 0), 80, 24);
        let text = lines.join("\n");
        let labels = &lines[label_row(&lines)];
        assert!(labels.contains("1*") && labels.contains(" 15"), "{text}");
        assert!(!labels.contains("40"), "{text}");
        assert!(text.contains("nodes 1-18 of 40"), "{text}");
        assert!(!text.contains("?: nev"), "cut status line: {text}");
        assert!(text.contains('\u{25b6}'), "{text}");

        // Scrolled: later nodes come in, the first go.
        let lines = draw(&screen(&v, Mode::Load, 10), 80, 24);
        let text = lines.join("\n");
        let labels = &lines[label_row(&lines)];
        assert!(labels.split_whitespace().any(|w| w == "28"), "{text}");
        assert!(!labels.contains("1*"), "{text}");
        assert!(text.contains('\u{25c0}'), "{text}");
        assert!(bar_height(&lines, 28) > bar_height(&lines, 12), "{text}");

        // Past the end: the last page, full.
        let lines = draw(&screen(&v, Mode::Load, 100), 80, 24);
        let labels = &lines[label_row(&lines)];
        assert!(labels.split_whitespace().any(|w| w == "40"), "{labels}");
        assert!(labels.split_whitespace().any(|w| w == "23"), "{labels}");
    }

    #[test]
    fn a_down_node_among_many_narrow_columns_still_says_down() {
        let nodes: Vec<NodeView> = (1..=30)
            .map(|i| match i {
                1 => node(i, NodeState::Local, 10),
                5 => node(i, NodeState::Down, 0),
                _ => node(i, NodeState::Up, 10),
            })
            .collect();
        let v = view(nodes);
        let lines = draw(&screen(&v, Mode::Load, 0), 80, 24);
        let text = lines.join("\n");
        // Written down the column: D, O, W, N.
        let column: String = lines[..label_row(&lines)]
            .iter()
            .filter_map(|l| l.chars().find(|c| "DOWN".contains(*c)))
            .collect();
        assert_eq!(column, "DOWN", "{text}");
    }

    #[test]
    fn every_mode_draws_with_its_own_scale() {
        let v = view(vec![
            node(1, NodeState::Local, 50),
            node(2, NodeState::Up, 150),
        ]);
        for (mode, title, top) in [
            (Mode::Speed, "Speed", "20000\u{2524}"),
            (Mode::Memory, "Memory", "4.0G\u{2524}"),
            (Mode::RawMemory, "Raw memory", "4.0G\u{2524}"),
            (Mode::Util, "Utilisation", "100%\u{2524}"),
        ] {
            let lines = draw(&screen(&v, mode, 0), 80, 24);
            let text = lines.join("\n");
            assert!(lines[0].contains(title), "{text}");
            assert!(text.contains(top), "{mode:?}: {text}");
        }
        // Memory: 1 GiB in use of 4, raw: 3 GiB; the rest of the total shaded.
        let memory = draw(&screen(&v, Mode::Memory, 0), 80, 24);
        let raw = draw(&screen(&v, Mode::RawMemory, 0), 80, 24);
        assert!(bar_height(&raw, 2) > bar_height(&memory, 2));
        // The figure in use stands just above its bar, in the shade.
        assert!(
            memory.join("\n").contains("\u{2591}1.0G\u{2591}"),
            "{}",
            memory.join("\n")
        );
    }

    #[test]
    fn an_unreachable_daemon_is_shown_not_fatal() {
        let screen = Screen {
            view: None,
            mode: Mode::Load,
            scroll: 0,
            problem: Some("cannot reach the omx daemon at /run/omx/control.sock"),
            help: false,
        };
        let lines = draw(&screen, 80, 24);
        assert!(
            lines
                .iter()
                .any(|l| l.contains("cannot ask the daemon, retrying")),
            "{}",
            lines.join("\n")
        );
        // Too small a terminal is said, not a panic.
        let lines = draw(&screen, 10, 5);
        assert!(lines[0].starts_with("mosmon"));
    }

    #[test]
    fn keys_switch_modes_scroll_and_quit() {
        let mut app = App::new(Mode::Load);
        app.view = Some(view((1..=40).map(|i| node(i, NodeState::Up, 0)).collect()));
        let press = |c: KeyCode| KeyEvent::new(c, KeyModifiers::NONE);
        app.key(press(KeyCode::Char('s')));
        assert_eq!(app.mode, Mode::Speed);
        app.key(press(KeyCode::Char('u')));
        assert_eq!(app.mode, Mode::Util);
        app.key(press(KeyCode::Right));
        assert_eq!(app.scroll, 1);
        app.key(press(KeyCode::PageDown));
        app.key(press(KeyCode::PageDown));
        app.key(press(KeyCode::PageDown));
        assert_eq!(app.scroll, 40 - Columns::for_width(40, 80).fit);
        app.key(press(KeyCode::Home));
        assert_eq!(app.scroll, 0);
        assert!(matches!(app.key(press(KeyCode::Char('q'))), Step::Quit));
        assert!(matches!(
            app.key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Step::Quit
        ));
    }

    #[test]
    fn nice_scales() {
        assert_eq!(nice_ceiling(100.0), 100.0);
        assert_eq!(nice_ceiling(101.0), 200.0);
        assert_eq!(nice_ceiling(210.0), 250.0);
        assert_eq!(nice_ceiling(27_000.0), 50_000.0);
        assert_eq!(nice_ceiling(0.5), 1.0);
    }
}
