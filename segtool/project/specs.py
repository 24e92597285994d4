"""Pydantic schemas for every project file.

All models forbid unknown keys, so a typo is an error with the nearest valid
key as a hint (see project/validation.py). Each spec that appears in a file
carries `file` and `line` (set by the loader) so later stages can point at it.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_serializer,
    model_validator,
)

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _check_name(v: str) -> str:
    if not NAME_RE.match(v):
        raise ValueError(
            f"'{v}' is not a valid name: use letters, digits and underscores, not starting with a digit"
        )
    return v


# a node name: referenced from other files and used in table names
Name = Annotated[str, AfterValidator(_check_name)]


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    _file: str | None = PrivateAttr(default=None)
    _line: int | None = PrivateAttr(default=None)
    # field -> the line where its text starts in the file (a predicate's
    # errors point there, not at the mapping that holds it)
    _text_lines: dict[str, int] = PrivateAttr(default_factory=dict)

    def at(self, file: str | None, line: int | None, text_lines: dict[str, int] | None = None):
        self._file, self._line = file, line
        self._text_lines = dict(text_lines or {})
        return self

    def text_line(self, field: str) -> int | None:
        """The line where FIELD's text starts (else this spec's own line)."""
        return self._text_lines.get(field, self._line)

    @property
    def file(self) -> str | None:
        return self._file

    @property
    def line(self) -> int | None:
        return self._line


# --------------------------------------------------------------------------- project


# columns segtool writes beside the key (segments.NAME and its history,
# _segtool.texts__TEXT, _segtool.inputs__NAME, work tables): a key of one of
# these names clashed ('Column with name "segment" already exists'), or the
# segment table got the key as run_id and the run as run_id_1
SEGTOOL_COLUMNS = (
    "segment_id", "segment", "distance", "confidence", "run_id", "updated_at",
    "valid_from_run", "valid_to_run", "valid_from", "valid_to",
    "row_hash", "text_hash", "text", "n_chars", "truncated", "input_hash",
)  # fmt: skip


class EntitySpec(Spec):
    name: str = "user"
    key: str = "user_id"

    @field_validator("key")
    @classmethod
    def _not_ours(cls, v: str) -> str:
        if v.lower() in SEGTOOL_COLUMNS or v.startswith("__"):
            raise ValueError(
                f"the key '{v}' is a column segtool writes beside the key in its tables "
                f"({', '.join(SEGTOOL_COLUMNS[:6])}, ...): name it otherwise in the models "
                "(e.g. user_id)"
            )
        return v


class PathsSpec(Spec):
    models: str = "models"
    templates: str = "templates"
    segments: str = "segments"


class ProjectSpec(Spec):
    name: Name
    version: int | str | None = None
    entity: EntitySpec = EntitySpec()
    target: str | None = None
    vars: dict[str, Any] = {}
    secret_vars: list[str] = []  # vars whose values are masked wherever segtool writes
    paths: PathsSpec = PathsSpec()


class ExecutorSpec(Spec):
    """Where the heavy stages run (docs/scale.md): embedding, and the
    assignment of segmentations with more than `assign_min_users` users. SQL
    and fitting always run in the segtool process."""

    kind: Literal["local", "ray"] = "local"
    # a running Ray cluster (`auto`, `ray://host:10001`); unset: RAY_ADDRESS, else
    # a Ray instance started on this machine for the run
    address: str | None = None
    workers: int = Field(default=1, ge=1)  # encoder actors (and assignment tasks in flight)
    gpus_per_worker: float = Field(default=0, ge=0)
    cpus_per_worker: float = Field(default=1, gt=0)
    # texts per batch sent to an actor, committed as one shard; unset: the local
    # chunk (SEGTOOL_EMBED_CHUNK, 2048), which gives bit-identical vectors
    batch_size: int | None = Field(default=None, ge=1)
    # a segmentation assigning more users than this assigns them on the workers
    assign_min_users: int = Field(default=1_000_000, ge=1)
    # seconds to reach `address` (Ray itself retries an unreachable one for minutes)
    connect_timeout_s: float = Field(default=10, gt=0)
    # seconds a cluster may take to offer one worker's CPUs and GPUs (an
    # autoscaler adding a node); a local instance never grows, so it is not waited for
    resources_timeout_s: float = Field(default=300, ge=0)


_MEMORY = re.compile(r"(\d+(?:\.\d+)?)\s*(kb|mb|gb|tb|kib|mib|gib|tib|%)", re.IGNORECASE)
_MEMORY_UNITS = {
    **{u: 1000**i for i, u in enumerate(("kb", "mb", "gb", "tb"), 1)},
    **{u: 1024**i for i, u in enumerate(("kib", "mib", "gib", "tib"), 1)},
}


DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _checked_device(v: str | None) -> str | None:
    if v is not None and not DEVICE_RE.match(v):
        raise ValueError("device must be auto, cpu, cuda, cuda:N or mps")
    return v


class TargetSpec(Spec):
    database: str = "target/segtool.duckdb"
    threads: int = Field(default=2, ge=1)
    device: str | None = None
    memory_limit: str | None = None
    # the SQL fence (docs/security.md): extra files/folders the database may read,
    # or no fence at all (remote sources, extensions)
    allow_paths: list[str] = []
    external_access: bool = False
    executor: ExecutorSpec = ExecutorSpec()

    @field_validator("device")
    @classmethod
    def _device(cls, v: str | None) -> str | None:
        # checked here, not first at the embed stage of a run
        return _checked_device(v)

    @field_validator("memory_limit")
    @classmethod
    def _memory(cls, v: str | None) -> str | None:
        """A size DuckDB reads ('4GB', '512MiB') or a share of RAM ('80%'), of
        at least 64 MB: 'lots' was an internal error, '0GB' one at the first
        query, '-1GB' no limit at all."""
        if v is None:
            return v
        m = _MEMORY.fullmatch(str(v).strip())
        if m is None:
            raise ValueError("a size like '4GB', '512MB' or '80%'")
        number, unit = float(m.group(1)), m.group(2).lower()
        if unit == "%":
            if not 0 < number <= 100:
                raise ValueError("a share of memory is between 0% and 100%")
        elif number * _MEMORY_UNITS[unit] < 64 * 10**6:
            raise ValueError("at least 64MB: DuckDB cannot run a query in less")
        return v


class ProfilesSpec(Spec):
    targets: dict[str, TargetSpec] = {}


# --------------------------------------------------------------------------- models/*.yml

Test = str | dict[str, Any]


class ColumnSpec(Spec):
    name: str
    description: str = ""
    data_type: str | None = None
    tests: list[Test] = []
    data_tests: list[Test] = []
    tags: list[str] = []
    pii: bool = False  # personal data: kept out of texts and reports unless allowed

    def all_tests(self) -> list[Test]:
        return [*self.tests, *self.data_tests]


_OPTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class SourceTableSpec(Spec):
    name: Name
    description: str = ""
    path: str | None = None
    format: Literal["csv", "parquet", "json"] | None = None
    options: dict[str, Any] = {}
    identifier: str | None = None  # table name in an attached database
    columns: list[ColumnSpec] = []
    tags: list[str] = []

    @field_validator("options")
    @classmethod
    def _option_names(cls, v: dict[str, Any]) -> dict[str, Any]:
        # a key is written into the reader call as a name (`header = true`):
        # anything but an identifier would be SQL of its own (a key holding
        # `...); COPY ... TO '.git/config'` ran at validate)
        for key in v:
            if not isinstance(key, str) or not _OPTION_NAME.fullmatch(key):
                raise ValueError(
                    f"reader option {str(key)[:60]!r} is not an option name (letters, digits, _)"
                )
        return v


class SourceSpec(Spec):
    name: Name
    description: str = ""
    database: str | None = None  # path of a DuckDB file to attach read-only
    schema_: str | None = Field(default=None, alias="schema")
    tables: list[SourceTableSpec] = []
    tags: list[str] = []


_REF_CALL = re.compile(r"\s*ref\(\s*['\"]([^'\"]+)['\"]\s*\)\s*")


class ModelConfig(Spec):
    materialized: Literal["view", "table", "incremental"] = "view"
    unique_key: str | list[str] | None = None
    # incremental: after each merge, rows whose unique_key is not in this
    # model (a name, or ref('name')) are deleted: users gone upstream go here too
    delete_not_in: str | None = None
    # incremental: false keeps a model's rows across SQL changes and
    # --full-refresh (a source that drops old rows cannot rebuild it)
    full_refresh: bool | None = None

    @field_validator("delete_not_in")
    @classmethod
    def _ref_as_name(cls, v: str | None) -> str | None:
        """`ref('m')` written in YAML means the model m, as in config()."""
        m = _REF_CALL.fullmatch(v) if v is not None else None
        return m.group(1) if m else v

    @property
    def unique_keys(self) -> list[str]:
        """unique_key as a list (one column or several; [] when unset)."""
        k = self.unique_key
        return [k] if isinstance(k, str) else list(k or [])

    tags: list[str] = []
    enabled: bool = True


class ModelPropsSpec(Spec):
    name: str
    description: str = ""
    config: dict[str, Any] = {}
    columns: list[ColumnSpec] = []
    tags: list[str] = []


class PropertiesFile(Spec):
    version: int | None = None
    sources: list[SourceSpec] = []
    models: list[ModelPropsSpec] = []


# --------------------------------------------------------------------------- segments/*.yml


class FeatureColumnSpec(Spec):
    transform: Literal["none", "log1p", "clip", "rank"] = "none"
    type: Literal["numeric", "categorical"] = "numeric"
    clip: tuple[float, float] = (0.01, 0.99)  # quantiles for transform: clip
    impute: Literal["error", "zero", "mean", "median"] = "error"

    @field_validator("clip")
    @classmethod
    def _quantiles(cls, v: tuple[float, float]) -> tuple[float, float]:
        # [0.9, 5] failed at run time ('Quantiles must be in the range [0, 1]')
        low, high = v
        if not 0 <= low < high <= 1:
            raise ValueError("two quantiles, low below high, within [0, 1]: e.g. [0.01, 0.99]")
        return v


class FeatureSetSpec(Spec):
    name: Name
    model: str
    columns: dict[str, FeatureColumnSpec | None]
    scale: Literal["standard", "robust", "minmax", "none"] = "standard"
    description: str = ""
    tags: list[str] = []

    @field_validator("columns")
    @classmethod
    def _fill(cls, v: dict) -> dict:
        if not v:
            raise ValueError("a feature set needs at least one column")
        return {k: (c if c is not None else FeatureColumnSpec()) for k, c in v.items()}


class TextSpec(Spec):
    name: Name
    model: str
    template: str
    max_chars: int = Field(default=2000, ge=1)
    allow_pii: list[str] = []  # PII columns this template may tell
    description: str = ""
    tags: list[str] = []


class EncoderSpec(Spec):
    name: Name
    kind: Literal["transformers", "sentence-transformers", "static", "hashing"]
    model: str | None = None
    revision: str | None = None
    pooling: Literal["mean", "cls"] = "mean"
    normalize: bool = True
    max_length: int = Field(default=256, ge=8, le=8192)
    batch_size: int = Field(default=64, ge=1)
    device: str = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    backend: Literal["torch", "onnx"] = "torch"
    quantize: Literal["none", "int8"] = "none"
    trust_remote_code: bool = False
    # output dimension: hashing buckets (default 512), or the PCA dims a static
    # encoder is distilled to (default 256)
    dim: int | None = Field(default=None, ge=8, le=1 << 20)
    description: str = ""
    tags: list[str] = []

    @model_validator(mode="before")
    @classmethod
    def _dims_alias(cls, data):
        # `dims` (model2vec's word for the PCA size) is accepted for `dim`
        if isinstance(data, dict) and "dims" in data:
            if "dim" in data:
                raise ValueError("give `dim` or `dims`, not both")
            data = {("dim" if k == "dims" else k): v for k, v in data.items()}
        return data

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return _checked_device(v)

    @model_validator(mode="after")
    def _consistent(self):
        if self.kind != "hashing" and not self.model:
            raise ValueError(f"encoder kind '{self.kind}' needs `model` (a hub id or a local path)")
        if self.quantize == "int8" and self.backend != "onnx":
            raise ValueError("quantize: int8 needs backend: onnx")
        return self


class EmbeddingRef(Spec):
    text: str
    encoder: str


class InputSpec(Spec):
    embedding: EmbeddingRef | None = None
    features: str | None = None
    weight: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _one(self):
        if (self.embedding is None) == (self.features is None):
            raise ValueError(
                "each input is either {embedding: {text, encoder}} or {features: NAME}"
            )
        return self


class ReduceSpec(Spec):
    method: Literal["none", "pca"] = "none"
    n_components: int = Field(default=16, ge=1)


class ClusterSpec(Spec):
    method: Literal["kmeans", "minibatch_kmeans", "gmm", "agglomerative", "hdbscan"] = "kmeans"
    k: int | Literal["auto"] | None = 8
    k_range: tuple[int, int] = (2, 12)
    seed: int = 0
    min_cluster_size: int = Field(default=15, ge=2)  # hdbscan
    sample_size: int = Field(default=20000, ge=100)  # silhouette / agglomerative fit sample
    # users the model is fitted on (docs/scale.md): unset, every user up to
    # FIT_SAMPLE_DEFAULT (1,000,000) and a seeded sample of that many beyond;
    # a number, a seeded sample of at most that many; `all`, every user.
    # Everyone is then assigned with the fitted model.
    fit_sample: Annotated[int, Field(ge=100)] | Literal["all"] | None = None

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        # unset, fit_sample stays out of the dump, so adding the key did not
        # change the fit hash (and force a refit) of any existing segmentation
        out = handler(self)
        if self.fit_sample is None and isinstance(out, dict):
            out.pop("fit_sample", None)
        return out

    @field_validator("k")
    @classmethod
    def _k(cls, v):
        if isinstance(v, int) and v < 1:
            raise ValueError("k must be at least 1")
        return v

    @model_validator(mode="after")
    def _k_range(self):
        # [8, 3] passed and the run said it needed more users; [1, 3] began
        # at 2. Read only with k: auto (a fixed k with any k_range ran before)
        low, high = self.k_range
        if self.k == "auto" and not 2 <= low <= high:
            raise ValueError(
                f"k_range must be [low, high] with 2 <= low <= high (got [{low}, {high}])"
            )
        return self

    def ignored(self) -> list[str]:
        """Options written in the file that this method never reads:
        `min_cluster_size: 50` with kmeans ran as if unwritten."""
        written = self.model_fields_set
        fixed_k = self.method != "hdbscan" and self.k != "auto"
        unread = {
            "min_cluster_size": (
                self.method != "hdbscan",
                f"only hdbscan reads it, not {self.method}",
            ),
            "k": (self.method == "hdbscan", "hdbscan finds its own number of segments"),
            "k_range": (fixed_k or self.method == "hdbscan", "it is read only with `k: auto`"),
            "sample_size": (
                fixed_k and self.method != "agglomerative",
                f"{self.method} with a fixed k fits on every user (or on `fit_sample`)",
            ),
        }
        return [
            f"cluster.{opt} is ignored: {why}"
            for opt, (no, why) in unread.items()
            if no and opt in written
        ]


class UpdateSpec(Spec):
    refit: Literal["never", "always", "on_drift"] = "on_drift"
    drift_threshold: float = Field(default=0.25, gt=0)


class LabelsSpec(Spec):
    keywords: int = Field(default=5, ge=0)
    features: int = Field(default=3, ge=0)


class SegmentTestsSpec(Spec):
    min_share: float | None = Field(default=None, ge=0, le=1)
    max_share: float | None = Field(default=None, ge=0, le=1)
    max_moved_share: float | None = Field(default=None, ge=0, le=1)
    min_silhouette: float | None = Field(default=None, ge=-1, le=1)
    # column (or model.column) -> bound on its association with the segments
    # (Cramér's V or rank η², as `segtool show` lists drivers)
    max_association: dict[str, float] = {}
    min_association: dict[str, float] = {}

    @field_validator("max_association", "min_association")
    @classmethod
    def _bounds(cls, v: dict[str, float]) -> dict[str, float]:
        for col, bound in v.items():
            if not 0 <= bound <= 1:
                raise ValueError(f"association bound for '{col}' must be between 0 and 1")
        return v

    @model_validator(mode="after")
    def _shares(self):
        # no segmentation can pass both: `segtool test` failed on every run
        if self.min_share is not None and self.max_share is not None:
            if self.min_share > self.max_share:
                raise ValueError(
                    f"min_share {self.min_share:g} is above max_share {self.max_share:g}: "
                    "no segment can pass both"
                )
        return self


class RuleSpec(Spec):
    segment: str
    when: str


class SegmentationSpec(Spec):
    name: Name
    description: str = ""
    tags: list[str] = []
    model: str | None = None  # rule segments: the model the predicates read
    population: str | None = None
    inputs: list[InputSpec] = []
    reduce: ReduceSpec = ReduceSpec()
    cluster: ClusterSpec | None = None
    update: UpdateSpec = UpdateSpec()
    labels: LabelsSpec = LabelsSpec()
    tests: SegmentTestsSpec = SegmentTestsSpec()
    rules: list[RuleSpec] = []
    default: str | None = None
    allow_pii: list[str] = []  # PII feature columns this segmentation may use and show

    @property
    def is_rules(self) -> bool:
        return bool(self.rules)

    @model_validator(mode="after")
    def _shape(self):
        if self.rules:
            if self.inputs or self.cluster:
                raise ValueError(
                    "a segmentation has either `rules` or `inputs` + `cluster`, not both"
                )
            if not self.model:
                raise ValueError("rule segments need `model`: the model their predicates read")
        else:
            if not self.inputs:
                raise ValueError(
                    "a segmentation needs `inputs` (embeddings and/or features) or `rules`"
                )
            if self.cluster is None:
                self.cluster = ClusterSpec()
            seen: set[str] = set()
            for inp in self.inputs:
                what = (
                    f"features '{inp.features}'"
                    if inp.features
                    else f"embedding {{text: {inp.embedding.text}, encoder: {inp.embedding.encoder}}}"
                )
                if what in seen:  # it doubled its weight and showed twice in `show`
                    raise ValueError(f"{what} is listed twice in `inputs`: give it one weight")
                seen.add(what)
            k, top = self.cluster.k, self.tests.max_share
            if isinstance(k, int) and self.cluster.method != "hdbscan" and top is not None:
                # at most k segments of at most max_share each hold k x max_share of everyone
                if k * top < 1 - 1e-9:
                    raise ValueError(
                        f"tests.max_share {top:g} with k {k}: {k} segments of at most "
                        f"{top:.0%} hold at most {k * top:.0%} of the users, so the test "
                        "fails on every run (raise max_share or k)"
                    )
        return self


class SegmentsFile(Spec):
    features: list[FeatureSetSpec] = []
    texts: list[TextSpec] = []
    encoders: list[EncoderSpec] = []
    segmentations: list[SegmentationSpec] = []
