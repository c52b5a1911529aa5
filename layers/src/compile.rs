//! `Plan` → `Stack`: open the leaves and build the layer tree, children
//! first, each layer opened by its kind ([`crate::kinds::Kind::open`]).

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use crate::compress::Compress;
use crate::counted::{Counted, Node};
use crate::direct::DirectTop;
use crate::escape::escape_controls;
use crate::exec::{Executor, IoCtx};
use crate::file::FileLeaf;
use crate::kinds::Opening;
use crate::mirror::Mirror;
use crate::null::NullLeaf;
use crate::plan::{LayerId, LiveChange, Plan};
use crate::report::LayerReport;
use crate::stats::{HistogramSnapshot, LatencySnapshot, LayerStats, Op, StatsSnapshot};
use crate::{AsyncLayer, IoBuf, IoBufMut, Layer, LocalBoxFuture, Result};

/// Why a plan could not be compiled (a leaf that cannot be opened, sizes that do
/// not fit). Names the layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError {
    pub layer: String,
    pub message: String,
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "layer \"{}\": {}",
            escape_controls(&self.layer),
            escape_controls(&self.message)
        )
    }
}

impl std::error::Error for CompileError {}

/// A layer as its kind opened it ([`crate::kinds::Kind::open`]), still of its
/// own type: [`compile()`] wraps it with its counters before it becomes a
/// `dyn Layer`, so that a request costs one boxed future per layer, not two.
pub struct Opened {
    layer: Arc<dyn Layer>,
    count: Box<dyn FnOnce(Node, u32) -> Compiled>,
}

impl Opened {
    /// A layer, to be shared by the stack (and counted there).
    pub fn of<L: AsyncLayer + 'static>(layer: L) -> Opened {
        Opened::new(Arc::new(layer))
    }

    /// A layer the kind also keeps a handle on (see [`crate::kinds::Opening::keep`]).
    pub fn new<L: AsyncLayer + 'static>(layer: Arc<L>) -> Opened {
        Opened {
            layer: layer.clone(),
            count: Box::new(move |node, block_size| {
                let counted = Arc::new(Counted::new(node, block_size, layer));
                Compiled {
                    layer: counted.clone(),
                    typed: counted.clone(),
                    counts: counted,
                }
            }),
        }
    }
}

/// A layer of the tree with its counters: the same one object seen as the
/// layer the others call and as the counters `status` reads.
struct Compiled {
    layer: Arc<dyn Layer>,
    /// The same object of its own type (`Counted<L>`), for [`Direct`].
    typed: Arc<dyn Any + Send + Sync>,
    counts: Arc<dyn Counts>,
}

/// The top layer of its own type, when it is a leaf whose requests the front
/// ends call without a boxed future: [`Stack::read`] and [`Stack::write`]
/// then await its future inside their own (the front end's task), so a
/// request to a stack that is one `file` or `disk` leaf allocates nothing.
/// Every other top goes through `dyn Layer`, one boxed future per layer.
enum Direct {
    File(Arc<Counted<FileLeaf>>),
    /// Only for `Stack::direct`: the future path has nothing to save on a
    /// leaf that does no I/O.
    Null(Arc<Counted<NullLeaf>>),
    Layer,
}

impl Direct {
    fn of(top: &Compiled) -> Direct {
        let typed = top.typed.clone();
        match typed.downcast::<Counted<FileLeaf>>() {
            Ok(file) => Direct::File(file),
            Err(typed) => match typed.downcast::<Counted<NullLeaf>>() {
                Ok(null) => Direct::Null(null),
                Err(_) => Direct::Layer,
            },
        }
    }
}

/// What the stack asks of a counted layer beyond its [`Layer`] operations.
trait Counts: Send + Sync {
    fn node(&self) -> &Node;
}

/// One row of `status`: a layer, its place in the tree and its counters.
#[derive(Clone, Debug)]
pub struct NodeStatus {
    pub name: String,
    pub type_name: &'static str,
    pub depth: usize,
    pub size: u64,
    pub stats: StatsSnapshot,
    pub latency: LatencySnapshot,
    /// Latency histograms, indexed as [`Op::ALL`].
    pub histograms: Vec<HistogramSnapshot>,
    pub report: LayerReport,
}

/// The compiled device: shared by every queue.
pub struct Stack {
    plan: Plan,
    nodes: Vec<Option<Compiled>>,
    direct: Direct,
    /// What each layer's kind kept at open for calls that are no `Layer`
    /// operation (a mirror's re-add, resync and scrub), by layer id.
    handles: Vec<Option<Box<dyn Any + Send + Sync>>>,
}

impl Stack {
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn block_size(&self) -> u32 {
        self.plan.device.block_size
    }

    pub fn size(&self) -> u64 {
        self.top().size()
    }

    /// The layer the device exposes.
    pub fn top(&self) -> &dyn Layer {
        &*self.nodes[self.plan.top]
            .as_ref()
            .expect("top is compiled")
            .layer
    }

    /// Read through the top layer: the same as `top().read`, without a boxed
    /// future when the top is a leaf (see [`Direct`]). Front ends serve data
    /// requests through this and [`Stack::write`].
    pub async fn read(&self, ctx: &IoCtx, offset: u64, buf: &mut IoBufMut) -> Result<()> {
        match &self.direct {
            Direct::File(file) => {
                // `Counted::read`, in this future instead of one nested in it:
                // one future level less is about 23 instructions a request
                // (callgrind, 788 against 811).
                let start = file.begin(ctx, Op::Read, offset, buf.len() as u64)?;
                let res = AsyncLayer::read(&*file.inner, ctx, offset, buf).await;
                file.finish(ctx, Op::Read, start, &res);
                res
            }
            Direct::Null(_) | Direct::Layer => self.top().read(ctx, offset, buf).await,
        }
    }

    /// The top as a leaf that front ends may drive without a future (see
    /// `direct.rs`): `Some` when the top is a `file`, `disk` or `null` leaf.
    pub fn direct(&self) -> Option<DirectTop<'_>> {
        match &self.direct {
            Direct::File(file) => Some(DirectTop::new(file)),
            Direct::Null(null) => Some(DirectTop::null(null)),
            Direct::Layer => None,
        }
    }

    /// Write through the top layer (see [`Stack::read`]).
    pub async fn write(&self, ctx: &IoCtx, offset: u64, buf: &IoBuf) -> Result<()> {
        match &self.direct {
            Direct::File(file) => {
                let start = file.begin(ctx, Op::Write, offset, buf.len() as u64)?;
                let res = AsyncLayer::write(&*file.inner, ctx, offset, buf).await;
                file.finish(ctx, Op::Write, start, &res);
                res
            }
            Direct::Null(_) | Direct::Layer => self.top().write(ctx, offset, buf).await,
        }
    }

    /// The id of the layer named `name`.
    fn id(&self, name: &str) -> Option<LayerId> {
        self.plan.layers.iter().position(|l| l.name == name)
    }

    /// The compiled layer named `name`, for live knobs.
    pub fn layer(&self, name: &str) -> Option<&Arc<dyn Layer>> {
        self.nodes[self.id(name)?]
            .as_ref()
            .map(|c| &c.counts.node().layer)
    }

    /// What the kind of the layer named `name` kept at open, if it is a `T`.
    fn handle<T: 'static>(&self, name: &str) -> Option<&T> {
        self.handles[self.id(name)?].as_ref()?.downcast_ref::<T>()
    }

    /// The mirror layer named `name`, for `readd`, `resync_step` and
    /// `scrub_step`.
    pub fn mirror(&self, name: &str) -> Option<&Arc<Mirror>> {
        self.handle(name)
    }

    /// The compress layer named `name`, for the reload's check of a growth.
    pub fn compress(&self, name: &str) -> Option<&Arc<Compress>> {
        self.handle(name)
    }

    /// Apply a live change to the layer named `name`.
    pub async fn apply_live(
        &self,
        ctx: &IoCtx,
        name: &str,
        change: &LiveChange,
    ) -> std::result::Result<(), String> {
        match self.layer(name) {
            Some(layer) => layer.apply_live(ctx, change).await,
            None => Err(format!("no layer named \"{name}\"")),
        }
    }

    /// Grow the layer named `name` to `new_size` bytes (see [`AsyncLayer::grow`]).
    pub async fn grow(
        &self,
        ctx: &IoCtx,
        name: &str,
        new_size: u64,
    ) -> std::result::Result<(), String> {
        match self.id(name).and_then(|id| self.nodes[id].as_ref()) {
            // Through the counted wrapper, so that its range check follows.
            Some(compiled) => compiled.layer.grow(ctx, new_size).await,
            None => Err(format!("no layer named \"{name}\"")),
        }
    }

    /// Whether discard frees space on every leaf (advertised to the kernel).
    pub fn discard_frees_space(&self) -> bool {
        self.top().discard_frees_space()
    }

    /// Flush the whole stack.
    pub fn flush<'a>(&'a self, ctx: &'a IoCtx) -> LocalBoxFuture<'a, Result<()>> {
        self.top().flush(ctx)
    }

    /// The tree from the top down, for `status`.
    pub fn status(&self) -> Vec<NodeStatus> {
        let mut out = Vec::new();
        let mut stack = vec![(self.plan.top, 0)];
        while let Some((id, depth)) = stack.pop() {
            let Some(compiled) = &self.nodes[id] else {
                continue;
            };
            let node = compiled.counts.node();
            out.push(NodeStatus {
                name: node.name.clone(),
                type_name: node.type_name,
                depth,
                size: node.layer.size(),
                stats: node.stats.snapshot(),
                latency: node.stats.latency(),
                histograms: Op::ALL.map(|op| node.stats.histogram(op)).to_vec(),
                report: node.layer.report(),
            });
            stack.extend(node.children.iter().rev().map(|&c| (c, depth + 1)));
        }
        out
    }
}

/// Open every leaf and build the tree of `plan`. Files with `create = true` are
/// created here.
pub fn compile(plan: &Plan) -> std::result::Result<Stack, CompileError> {
    compile_with(plan, &mut |_| None)
}

/// [`compile`], with some layers supplied by the caller (`Some` from `supply`)
/// instead of built from the plan: the crash tests put recording leaves there.
pub fn compile_with(
    plan: &Plan,
    supply: &mut dyn FnMut(LayerId) -> Option<Arc<dyn Layer>>,
) -> std::result::Result<Stack, CompileError> {
    // Layers with on-disk metadata read it through a ring of their own at open.
    let io_error = |e: std::io::Error| CompileError {
        layer: plan.layers[plan.top].name.clone(),
        message: format!("cannot set up io_uring: {e}"),
    };
    let open_ctx = IoCtx::new(0, 64).map_err(io_error)?;
    let open_exec = Executor::new().map_err(io_error)?;
    // Before any layer is opened (a crypt layer's key): a plan that cannot
    // start fails before a leaf is created or a layer formatted.
    let mut prepared = plan
        .layers
        .iter()
        .map(|layer| {
            layer.spec.prepare().map_err(|message| CompileError {
                layer: layer.name.clone(),
                message,
            })
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let mut nodes: Vec<Option<Compiled>> = (0..plan.layers.len()).map(|_| None).collect();
    let mut handles: Vec<Option<Box<dyn Any + Send + Sync>>> =
        (0..plan.layers.len()).map(|_| None).collect();
    let block_size = plan.device.block_size;
    // Children before parents: reverse of the top-down walk.
    for id in plan.walk().into_iter().rev() {
        let layer_plan = &plan.layers[id];
        let children = layer_plan.spec.children();
        let opened = match supply(id) {
            Some(layer) => Opened::new(Arc::new(Supplied(layer))),
            None => {
                let below = children
                    .iter()
                    .map(|&c| {
                        let child = nodes[c]
                            .as_ref()
                            .expect("children are compiled before parents");
                        child.layer.clone()
                    })
                    .collect();
                let mut opening = Opening::new(
                    block_size,
                    below,
                    &open_ctx,
                    &open_exec,
                    prepared[id].take(),
                );
                let layer = layer_plan
                    .spec
                    .open(&mut opening)
                    .map_err(|message| CompileError {
                        layer: layer_plan.name.clone(),
                        message,
                    })?;
                handles[id] = opening.into_kept();
                layer
            }
        };
        let node = Node {
            name: layer_plan.name.clone(),
            type_name: layer_plan.spec.type_name(),
            children,
            layer: opened.layer,
            stats: LayerStats::default(),
        };
        nodes[id] = Some((opened.count)(node, block_size));
    }
    let direct = Direct::of(nodes[plan.top].as_ref().expect("top is compiled"));
    Ok(Stack {
        plan: plan.clone(),
        nodes,
        direct,
        handles,
    })
}

/// A layer that was handed to [`compile_with`] already as a `dyn Layer`.
struct Supplied(Arc<dyn Layer>);

impl AsyncLayer for Supplied {
    fn size(&self) -> u64 {
        self.0.size()
    }

    async fn read(&self, ctx: &IoCtx, offset: u64, buf: &mut IoBufMut) -> Result<()> {
        self.0.read(ctx, offset, buf).await
    }

    async fn write(&self, ctx: &IoCtx, offset: u64, buf: &IoBuf) -> Result<()> {
        self.0.write(ctx, offset, buf).await
    }

    async fn flush(&self, ctx: &IoCtx) -> Result<()> {
        self.0.flush(ctx).await
    }

    async fn discard(&self, ctx: &IoCtx, offset: u64, len: u64) -> Result<()> {
        self.0.discard(ctx, offset, len).await
    }

    async fn write_zeroes(&self, ctx: &IoCtx, offset: u64, len: u64) -> Result<()> {
        self.0.write_zeroes(ctx, offset, len).await
    }

    fn discard_frees_space(&self) -> bool {
        self.0.discard_frees_space()
    }

    async fn apply_live(
        &self,
        ctx: &IoCtx,
        change: &LiveChange,
    ) -> std::result::Result<(), String> {
        self.0.apply_live(ctx, change).await
    }

    async fn grow(&self, ctx: &IoCtx, new_size: u64) -> std::result::Result<(), String> {
        self.0.grow(ctx, new_size).await
    }

    fn allocation(&self, offset: u64, len: u64) -> Option<Vec<(u64, bool)>> {
        self.0.allocation(offset, len)
    }

    fn report(&self) -> LayerReport {
        self.0.report()
    }
}

impl<L: AsyncLayer> Counts for Counted<L> {
    fn node(&self) -> &Node {
        &self.node
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::PlanBuilder;
    use crate::Error;

    /// A key that cannot be loaded refuses the plan before the leaf below it is
    /// created (and so before anything is formatted).
    #[test]
    fn a_missing_key_refuses_the_plan_before_any_leaf_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = PlanBuilder::new(dir.path(), 4096);
        let leaf = b.file("leaf", 1 << 20);
        let top = b.crypt("x", leaf, "UBLK_STACK_TEST_KEY_THAT_IS_NEVER_SET");
        let error = compile(&b.build(top)).err().expect("refused");
        assert_eq!(error.layer, "x");
        assert!(error.message.contains("not set"), "{error}");
        assert!(
            !dir.path().join("leaf.img").exists(),
            "the leaf was created"
        );
    }

    /// A memory device too large to even index is an error, not an abort.
    #[test]
    fn an_impossible_memory_device_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = PlanBuilder::new(dir.path(), 4096);
        let top = b.memory("m", u64::MAX / 4096 * 4096);
        let error = compile(&b.build(top)).err().expect("refused");
        assert!(error.message.contains("cannot allocate"), "{error}");
    }

    #[test]
    fn names_and_messages_are_shown_escaped() {
        let error = CompileError {
            layer: "a\nb".into(),
            message: "bad\x1b[2J".into(),
        };
        assert_eq!(error.to_string(), "layer \"a\\nb\": bad\\u{1b}[2J");
    }

    /// A stack that is one file leaf serves `Stack::read` and `write`
    /// without `dyn Layer`, and still checks ranges and counts requests as
    /// the layer does; any other top goes through the layer.
    #[test]
    fn a_file_top_is_called_directly_with_its_checks_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = PlanBuilder::new(dir.path(), 4096);
        let leaf = b.file("leaf", 1 << 20);
        let stack = compile(&b.build(leaf)).unwrap();
        assert!(matches!(stack.direct, Direct::File(_)));
        assert!(stack.direct().is_some(), "a file top runs without a task");
        let (ctx, exec) = (IoCtx::new(0, 8).unwrap(), Executor::new().unwrap());
        let mut data = ctx.buf(4096);
        data.fill(0x5A);
        let data = data.freeze();
        exec.block_on(&ctx, stack.write(&ctx, 8192, &data)).unwrap();
        let mut back = ctx.buf(4096);
        exec.block_on(&ctx, stack.read(&ctx, 8192, &mut back))
            .unwrap();
        assert!(back.iter().all(|&b| b == 0x5A));
        let past_end = exec.block_on(&ctx, stack.read(&ctx, 1 << 20, &mut back));
        assert!(matches!(past_end, Err(Error::OutOfRange)), "{past_end:?}");
        let counts = &stack.status()[0].stats;
        // The refused read is an error, not a read.
        assert_eq!((counts.reads, counts.writes, counts.errors), (1, 1, 1));

        let mut b = PlanBuilder::new(dir.path(), 4096);
        let leaf = b.memory("m", 1 << 20);
        let top = b.fault("f", leaf, Default::default());
        let stack = compile(&b.build(top)).unwrap();
        assert!(matches!(stack.direct, Direct::Layer));
        assert!(stack.direct().is_none());
        exec.block_on(&ctx, stack.write(&ctx, 0, &data)).unwrap();
        exec.block_on(&ctx, stack.read(&ctx, 0, &mut back)).unwrap();
        assert!(back.iter().all(|&b| b == 0x5A));

        // A null top runs without a task too; through the future path it
        // reads zeros as ever.
        let mut b = PlanBuilder::new(dir.path(), 4096);
        let leaf = b.null("n", 1 << 20);
        let stack = compile(&b.build(leaf)).unwrap();
        assert!(matches!(stack.direct, Direct::Null(_)));
        assert!(stack.direct().is_some(), "a null top runs without a task");
        exec.block_on(&ctx, stack.read(&ctx, 0, &mut back)).unwrap();
        assert!(back.iter().all(|&b| b == 0));
    }
}
