//! The grid of `balora compare`: methods (`label=manifold[:optimizer][,m.key=value][,o.key=value]`),
//! cells (method × lr × init × seed), each cell's folder and validated config.

use crate::compare::CompareArgs;
use anyhow::{bail, Context, Result};
use balora_config::{AdapterInit, JobConfig, OptionValue, Options};
use std::path::PathBuf;

/// One method of the grid.
#[derive(Debug, Clone)]
pub struct Method {
    /// Label in folders and the report.
    pub label: String,
    manifold: String,
    optimizer: Option<String>,
    manifold_opts: Vec<(String, OptionValue)>,
    optimizer_opts: Vec<(String, OptionValue)>,
}

fn parse_value(v: &str) -> OptionValue {
    if let Ok(b) = v.parse::<bool>() {
        OptionValue::Bool(b)
    } else if let Ok(i) = v.parse::<i64>() {
        OptionValue::Int(i)
    } else if let Ok(f) = v.parse::<f64>() {
        OptionValue::Float(f)
    } else {
        OptionValue::Str(v.trim_matches('"').to_string())
    }
}

fn parse_method(s: &str) -> Result<Method> {
    let (label, rest) = s.split_once('=').with_context(|| {
        format!("--method expects label=manifold[:optimizer][,m.key=value…], got `{s}`")
    })?;
    if label.is_empty()
        || !label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_+.".contains(c))
    {
        bail!("--method `{s}`: the label must be non-empty letters, digits, `-`, `_`, `+` or `.`");
    }
    let mut parts = rest.split(',');
    let head = parts.next().unwrap_or_default();
    let (manifold, optimizer) = match head.split_once(':') {
        Some((m, o)) => (m.to_string(), Some(o.to_string())),
        None => (head.to_string(), None),
    };
    let mut m = Method {
        label: label.into(),
        manifold,
        optimizer,
        manifold_opts: Vec::new(),
        optimizer_opts: Vec::new(),
    };
    for p in parts {
        let (k, v) = p
            .split_once('=')
            .with_context(|| format!("--method `{s}`: option `{p}` is not key=value"))?;
        match k.split_once('.') {
            Some(("m", key)) => m.manifold_opts.push((key.into(), parse_value(v))),
            Some(("o", key)) => m.optimizer_opts.push((key.into(), parse_value(v))),
            _ => bail!(
                "--method `{s}`: option `{k}` must start with `m.` (manifold) or `o.` (optimizer)"
            ),
        }
    }
    Ok(m)
}

/// One cell of the grid.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Index into [`Grid::methods`].
    pub method: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Init scale (or σ).
    pub init: f64,
    /// Seed.
    pub seed: u64,
}

/// The whole grid.
pub struct Grid {
    /// The base job.
    pub base: JobConfig,
    /// Methods, the first is the baseline.
    pub methods: Vec<Method>,
    /// Init axis is a Gaussian σ (else an init scale).
    pub by_std: bool,
    /// α = this × scale².
    pub alpha_per_scale2: Option<f64>,
    /// Every cell, in run order.
    pub cells: Vec<Spec>,
    /// The folder holding the cells' folders.
    pub out: PathBuf,
}

impl Grid {
    /// The folder of cell `s`.
    pub fn dir(&self, s: &Spec) -> PathBuf {
        let init = if self.by_std { "std" } else { "scale" };
        self.out.join(format!(
            "{}-lr{:e}-{init}{:e}-seed{}",
            self.methods[s.method].label, s.lr, s.init, s.seed
        ))
    }

    /// The config of one cell: the base with the method, lr, init and seed applied, validated
    /// like `balora train` validates its config.
    pub fn config(&self, s: &Spec) -> Result<JobConfig> {
        let m = &self.methods[s.method];
        let mut cfg = self.base.clone();
        cfg.trainer.lr = s.lr;
        cfg.trainer.seed = s.seed;
        cfg.trainer.progress = false;
        cfg.trainer.checkpoint_every = 0;
        cfg.trainer.resume = false;
        cfg.output.overwrite = false;
        if self.by_std {
            cfg.adapter.init = AdapterInit::Gaussian;
            cfg.adapter.init_std = Some(s.init);
        } else {
            cfg.adapter.init_scale = s.init;
            if let Some(c) = self.alpha_per_scale2 {
                cfg.adapter.alpha = c * s.init * s.init;
            }
        }
        if m.manifold != self.base.manifold.name {
            cfg.manifold.options = Options::default();
        }
        cfg.manifold.name = m.manifold.clone();
        for (k, v) in &m.manifold_opts {
            cfg.manifold.options.0.insert(k.clone(), v.clone());
        }
        if let Some(o) = &m.optimizer {
            if *o != self.base.optimizer.name {
                cfg.optimizer.options = Options::default();
            }
            cfg.optimizer.name = o.clone();
        }
        for (k, v) in &m.optimizer_opts {
            cfg.optimizer.options.0.insert(k.clone(), v.clone());
        }
        cfg.output.dir = self.dir(s);
        let init_flag = if self.by_std {
            "--init-stds"
        } else {
            "--init-scales"
        };
        cfg.validate().map_err(|e| {
            let e = e.to_string();
            let e = e.replace("`trainer.lr`", "`--lrs` (trainer.lr)");
            let e = e.replace("`adapter.init_std`", "`--init-stds` (adapter.init_std)");
            let e = e.replace(
                "`adapter.init_scale`",
                "`--init-scales` (adapter.init_scale)",
            );
            anyhow::anyhow!("{} lr {:e} {init_flag} {:e}: {e}", m.label, s.lr, s.init)
        })?;
        // Unknown plugin names and options fail here, before anything is loaded.
        balora_manifold::build_manifold(&cfg.manifold.name, &cfg.manifold.options).map_err(
            |e| {
                let names: Vec<&str> = balora_manifold::manifold_entries()
                    .map(|e| e.name)
                    .collect();
                anyhow::anyhow!(
                    "--method {}: {e} (manifolds: {})",
                    m.label,
                    names.join(", ")
                )
            },
        )?;
        let optimizers: Vec<&str> = balora_optim::optimizer_entries().map(|e| e.name).collect();
        if !optimizers.contains(&cfg.optimizer.name.as_str()) {
            bail!(
                "--method {}: unknown optimizer `{}`; allowed: {}",
                m.label,
                cfg.optimizer.name,
                optimizers.join(", ")
            );
        }
        Ok(cfg)
    }
}

/// The grid of `args`, checked (labels, init axis, α rule).
pub fn build_grid(args: &CompareArgs) -> Result<Grid> {
    let mut base = JobConfig::load(args.job.config.as_deref(), &args.job.sets)?;
    base.output.overwrite = false;
    let methods: Vec<Method> = args
        .methods
        .iter()
        .map(|m| parse_method(m))
        .collect::<Result<_>>()?;
    let mut labels: Vec<&str> = methods.iter().map(|m| m.label.as_str()).collect();
    labels.sort_unstable();
    if labels.windows(2).any(|w| w[0] == w[1]) {
        bail!("--method labels must be distinct");
    }
    let by_std = !args.init_stds.is_empty();
    let inits = if by_std {
        args.init_stds.clone()
    } else if args.init_scales.is_empty() {
        vec![1.0]
    } else {
        args.init_scales.clone()
    };
    if by_std && args.alpha_per_scale2.is_some() {
        bail!("--alpha-per-scale2 goes with --init-scales, not --init-stds");
    }
    if let Some(c) = args.alpha_per_scale2 {
        if !(c.is_finite() && c > 0.0) {
            bail!("--alpha-per-scale2 must be a finite number > 0, got {c}");
        }
    }
    let seeds = if args.seeds.is_empty() {
        vec![base.trainer.seed]
    } else {
        args.seeds.clone()
    };
    if methods.is_empty() || args.lrs.is_empty() {
        bail!("the grid is empty: give at least one --method and one --lrs value");
    }
    let mut cells = Vec::new();
    for &init in &inits {
        for &lr in &args.lrs {
            for &seed in &seeds {
                for method in 0..methods.len() {
                    cells.push(Spec {
                        method,
                        lr,
                        init,
                        seed,
                    });
                }
            }
        }
    }
    let out = args
        .job
        .out
        .clone()
        .unwrap_or_else(|| base.output.dir.join("compare"));
    Ok(Grid {
        base,
        methods,
        by_std,
        alpha_per_scale2: args.alpha_per_scale2,
        cells,
        out,
    })
}
