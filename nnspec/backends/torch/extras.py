"""The parts of a generated file that do not come from the network's graph: helper functions
some ops need, the optimizer and schedule of the train section, and the weight-file helpers.
"""

from __future__ import annotations

from nnspec.backends.torch.names import checked_identifier, literal
from nnspec.backends.torch.source import Stmt, call, expr, layout, list_of
from nnspec.ir.train import TrainConfig

HELPERS = {
    "noise_like": '''\
def noise_like(x, training):
    """Standard-normal samples shaped like x while training; zeros (the mean) at eval."""
    return torch.randn_like(x) if training else torch.zeros_like(x)''',
    "causal_mask": '''\
def causal_mask(x):
    """(T, T) mask of a sequence batch (B, T, E): True where a step would see a later one."""
    steps = x.shape[-2]
    return torch.ones(steps, steps, dtype=torch.bool, device=x.device).triu(1)''',
    "sinusoidal_positions": '''\
def sinusoidal_positions(steps, dim, device=None):
    """(steps, dim) fixed encodings (Vaswani et al.): sin on even features, cos on odd ones."""
    position = torch.arange(steps, dtype=torch.float64)[:, None]
    even = torch.arange(0, dim, 2, dtype=torch.float64)
    rate = torch.exp(even * (-math.log(10000.0) / dim))
    table = torch.zeros(steps, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate[: dim // 2])
    return table.to(device=device, dtype=torch.float32)''',
    "rotary_embedding": '''\
def rotary_embedding(x, theta, seq_dim=-2):
    """x rotated by its position along seq_dim (LLaMA's rotary embedding: frequency i of
    the first half of the last dim repeats in the second, `rotate_half`)."""
    steps, dim = x.shape[seq_dim], x.shape[-1]
    even = torch.arange(0, dim, 2, dtype=torch.float64, device=x.device)
    position = torch.arange(steps, dtype=torch.float64, device=x.device)
    angles = position[:, None] / theta ** (even / dim)
    angles = torch.cat([angles, angles], dim=-1)
    shape = [1] * x.dim()
    shape[seq_dim], shape[-1] = steps, dim
    cos, sin = (t.to(x.dtype).reshape(shape) for t in (angles.cos(), angles.sin()))
    half = dim // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin''',
    "GroupedQueryAttention": '''\
class GroupedQueryAttention(nn.Module):
    """Attention with LLaMA's projections (q_proj, k_proj, v_proj, o_proj): kv_heads
    key/value heads each serve a group of query heads; rope_theta rotates queries and
    keys; a boolean mask hides what is True (as nn.MultiheadAttention), a float mask is
    added to the scores."""

    def __init__(
        self,
        embed_dim,
        num_heads,
        kv_heads=None,
        kdim=None,
        bias=True,
        dropout=0.0,
        rope_theta=None,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.kv_heads = kv_heads or num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.rope_theta = rope_theta
        kv_dim = self.kv_heads * self.head_dim
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(kdim or embed_dim, kv_dim, bias=bias)
        self.v_proj = nn.Linear(kdim or embed_dim, kv_dim, bias=bias)
        self.o_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    def heads(self, x, count):
        """(B, T, count * head_dim) -> (B, count, T, head_dim)"""
        return x.view(x.shape[0], x.shape[1], count, self.head_dim).transpose(1, 2)

    def forward(
        self, x, memory=None, key_padding_mask=None, attn_mask=None, is_causal=False
    ):
        memory = x if memory is None else memory
        q = self.heads(self.q_proj(x), self.num_heads)
        k = self.heads(self.k_proj(memory), self.kv_heads)
        v = self.heads(self.v_proj(memory), self.kv_heads)
        if self.rope_theta is not None:
            q = rotary_embedding(q, self.rope_theta)
            k = rotary_embedding(k, self.rope_theta)
        bias = None
        if attn_mask is not None:  # (T, S) or (B, T, S) -> (B, 1, T, S)
            bias = self.additive(attn_mask.unsqueeze(-3), q.dtype)
        if key_padding_mask is not None:  # (B, S) -> (B, 1, 1, S)
            padding = self.additive(key_padding_mask[..., None, None, :], q.dtype)
            bias = padding if bias is None else bias + padding
        if is_causal and bias is not None:
            hidden = torch.ones(x.shape[1], memory.shape[1], dtype=torch.bool).triu(1)
            bias = bias + self.additive(hidden.to(x.device), q.dtype)
            is_causal = False
        dropout = self.dropout if self.training else 0.0
        grouped = self.kv_heads != self.num_heads
        out = F.scaled_dot_product_attention(
            q, k, v, bias, dropout, is_causal, enable_gqa=grouped
        )
        return self.o_proj(out.transpose(1, 2).flatten(2))

    @staticmethod
    def additive(mask, dtype):
        """A boolean mask (True hides) as -inf/0 to add to scores; a float one as it is."""
        if mask.dtype != torch.bool:
            return mask
        zeros = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        return zeros.masked_fill(mask, float("-inf"))''',
}

# Sampling for a language model (token ids in, scores per position and token out), as
# nanoGPT's `generate`; __CONTEXT__ is the expression of the model's context length.
GENERATE = '''
    @torch.no_grad()
    def generate(self, tokens, new_tokens, temperature=1.0, top_k=None, generator=None):
        """`tokens` (B, T) followed by `new_tokens` sampled one at a time, each from the
        scores at the last position of the model's context (its last `context` tokens):
        divided by `temperature` (0: always the most likely token), only the `top_k`
        best kept."""
        context = __CONTEXT__
        for _ in range(new_tokens):
            scores = __SCORES__[:, -1, :]
            if temperature == 0:
                following = scores.argmax(dim=-1, keepdim=True)
            else:
                scores = scores / temperature
                if top_k is not None:
                    best = torch.topk(scores, min(top_k, scores.shape[-1])).values
                    scores = scores.masked_fill(scores < best[:, -1:], -math.inf)
                probabilities = F.softmax(scores, dim=-1)
                following = torch.multinomial(probabilities, 1, generator=generator)
            tokens = torch.cat([tokens, following], dim=1)
        return tokens'''

OPTIMIZERS = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop",
              "adagrad": "Adagrad"}

FIXED_NAMES = ("loss_fn", "make_optimizer", "make_scheduler", "save_weights", "load_weights",
               "TIED_WEIGHTS", *HELPERS)


def _kwargs(args: dict) -> dict:
    return {checked_identifier(k): literal(tuple(v) if isinstance(v, list) else v)
            for k, v in args.items()}


def make_optimizer(train: TrainConfig, where: str) -> str:
    opt = train.optimizer
    body = Stmt(None, expr(call(f"torch.optim.{OPTIMIZERS[opt.name]}", "model.parameters()",
                                **_kwargs(opt.args))), keyword="return")
    lines = ["def make_optimizer(model):",
             f'    """`{opt.name}` of the train section ({where}), every setting spelled out."""']
    return "\n".join(lines + layout([body], str, "    "))


def make_scheduler(train: TrainConfig, where: str) -> str:
    """The spec's lr schedule, stepped once per epoch as nnspec's trainer does. A warm-up
    ramps from lr / (warmup + 1) to lr over `warmup` epochs, then the schedule starts."""
    sched = train.schedule
    warmup = sched.args.get("warmup", 0)
    lr = "torch.optim.lr_scheduler"
    if sched.name == "step":
        main = call(f"{lr}.StepLR", "optimizer", step_size=literal(sched.args["step_size"]),
                    gamma=literal(sched.args["gamma"]))
    else:
        main = call(f"{lr}.CosineAnnealingLR", "optimizer",
                    T_max=literal(max(1, train.epochs - warmup)),
                    eta_min=literal(sched.args["eta_min"]))
    doc = f'    """`{sched.name}` schedule ({where}): call `scheduler.step()` once per epoch."""'
    if not warmup:
        return "\n".join(["def make_scheduler(optimizer):", doc]
                         + layout([Stmt(None, expr(main), keyword="return")], str, "    "))
    ramp = call(f"{lr}.LinearLR", "optimizer", start_factor=literal(1.0 / (warmup + 1)),
                total_iters=literal(warmup))
    sequence = call(f"{lr}.SequentialLR", "optimizer", list_of(["warmup", "schedule"]),
                    milestones=list_of([literal(warmup)]))
    body = [Stmt("warmup", expr(ramp)), Stmt("schedule", expr(main)),
            Stmt(None, expr(sequence), keyword="return")]
    return "\n".join(["def make_scheduler(optimizer):", doc] + layout(body, str, "    "))


def weight_helpers(ties: dict[str, str]) -> str:
    """save_weights/load_weights through safetensors. A tied weight is one tensor under two
    state_dict keys; nnspec stores it once (under the layer that owns it), and safetensors
    refuses shared tensors, so the copies listed in TIED_WEIGHTS are left out and come back
    by themselves when the owner is loaded."""
    if not ties:
        return '''\
def save_weights(model, path):
    """Write the weights (of a model, or a state dict) as safetensors under nnspec's names
    (nnspec can load the file)."""
    from safetensors.torch import save_file

    save_file(model if isinstance(model, dict) else model.state_dict(), path)


def load_weights(model, path):
    """Load a safetensors file written by nnspec or by save_weights."""
    from safetensors.torch import load_file

    model.load_state_dict(load_file(path))'''
    entries = [Stmt(None, expr(f'"{copy}": "{owner}",')) for copy, owner in ties.items()]
    table = ["# state_dict keys that are tied copies of another key (not stored in weight files)",
             "TIED_WEIGHTS = {"] + layout(entries, str, "    ") + ["}"]
    return "\n".join(table) + '''


def save_weights(model, path):
    """Write the weights (of a model, or a state dict) as safetensors under nnspec's names,
    each tied weight once."""
    from safetensors.torch import save_file

    state = model if isinstance(model, dict) else model.state_dict()
    save_file({k: v for k, v in state.items() if k not in TIED_WEIGHTS}, path)


def load_weights(model, path):
    """Load a safetensors file written by nnspec or by save_weights; tied copies follow
    the weight they share."""
    from safetensors.torch import load_file

    missing, unexpected = model.load_state_dict(load_file(path), strict=False)
    if unexpected or set(missing) - set(TIED_WEIGHTS):
        raise KeyError(f"missing {missing}, unexpected {unexpected}")'''
