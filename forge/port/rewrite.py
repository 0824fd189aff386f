"""A pangeo-forge-recipes recipe module rewritten into a forge recipe: a syntax-tree rewrite with libcst.

The user's own code (URL functions, preprocessors, tests, helpers) is kept as written; what changes:

- imports from ``pangeo_forge_recipes`` become ``from forge import ...``; Apache Beam's go;
- 0.9: ``XarrayZarrRecipe(...)`` keeps the arguments forge has and drops orchestration ones (forge
  caches, locks and consolidates on its own);
- 0.10: a Beam pipeline ``beam.Create(pattern.items()) | OpenURLWithFSSpec() | OpenWithXarray(...) |
  ... | StoreToZarr(...) | beam.Map(test_ds)`` becomes ``XarrayZarrRecipe(pattern, ...)``: per-dataset
  steps (``beam.Map``/``MapTuple``, or a ``PTransform`` whose ``expand`` applies them) become its
  ``process_input``, the steps after the store its ``tests``; ``PTransform`` s that return their input
  unchanged are dropped;
- annotations that name what is gone (``zarr.storage.FSStore``, ``Indexed``, ``beam.PCollection``) are
  dropped, so the module imports under zarr-python 3.

Every change is a :class:`Note` with its line in the original; what could not be translated is a note
with ``translated=False`` (and a ``# forge port:`` comment in the code where it was).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import libcst as cst
import libcst.matchers as m
from libcst.metadata import MetadataWrapper, PositionProvider

FORGE_NAMES = {
    "ConcatDim",
    "MergeDim",
    "FilePattern",
    "FileType",
    "pattern_from_file_sequence",
    "XarrayZarrRecipe",
}
RENAMED = {"HDFReferenceRecipe": "ReferenceRecipe"}  # pangeo-forge's name -> forge's
SUBMODULES = {"patterns", "recipes"}  # pangeo-forge modules whose names forge exports at its top
# 0.9's XarrayZarrRecipe: arguments forge takes as they are, and those it has no use for (and why)
KEPT_ARGS = {
    "target_chunks",
    "process_input",
    "process_chunk",
    "xarray_open_kwargs",
    "xarray_concat_kwargs",
    "inputs_per_chunk",
    "subset_inputs",
}
DROPPED_ARGS = {
    "cache_inputs": "forge always caches inputs",
    "copy_input_to_local_file": "forge reads inputs from its cache",
    "consolidate_zarr": "forge consolidates the metadata when it publishes",
    "consolidate_dimension_coordinates": "forge writes each dimension coordinate as one chunk",
    "lock_timeout": "forge gives every chunk exactly one writer: no locks",
    "target": "the store goes under the run's --target-root",
    "input_cache": "inputs are cached under the run's --cache-root",
    "metadata_cache": "forge keeps no metadata cache",
    "storage_config": "storage is the run's --target-root and --cache-root",
    "delete_input_encoding": "forge keeps each variable's packing and the source's time encoding",
    "open_input_with_kerchunk": "forge opens inputs with xarray",
}
# 0.9's HDFReferenceRecipe: arguments forge takes as they are, and those it has no use for (and why)
REFERENCE_KEPT_ARGS: set[str] = set()
REFERENCE_RENAMED_ARGS = {"netcdf_storage_options": "storage_options"}  # how the sources are read (S3)
REFERENCE_DROPPED_ARGS = {
    "output_json_fname": "the references are named after the recipe",
    "output_intake_yaml_fname": "forge writes no intake catalog",
    "inline_threshold": "the dimension coordinates are copied into the references, the rest referenced",
    "concat_dims": "the pattern's ConcatDim",
    "identical_dims": "the dimension coordinates are loaded from the first input",
    "target": "the references go under the run's --target-root",
    "input_cache": "references point at the sources: nothing is cached",
    "metadata_cache": "forge keeps no metadata cache",
    "storage_config": "storage is the run's --target-root",
}
# Beam steps of a reference pipeline that forge's ReferenceRecipe does on its own
REFERENCE_STEPS = {
    "OpenWithKerchunk": "forge reads each input's metadata with VirtualiZarr",
    "WriteCombinedReference": "forge combines the references and writes them",
}
# StoreToZarr's arguments forge takes as they are, and those it cannot
STORE_ARGS = ("target_chunks", "attrs", "dynamic_chunking_fn", "dynamic_chunking_fn_kwargs")
STORE_UNTRANSLATED: dict[str, str] = {}
# Beam steps forge does on its own
BUILT_IN_STEPS = {
    "OpenURLWithFSSpec": "forge fetches and caches every input",
    "ConsolidateDimensionCoordinates": "forge writes each dimension coordinate as one chunk",
    "ConsolidateMetadata": "forge consolidates the metadata when it publishes",
}


@dataclass(frozen=True)
class Note:
    line: int
    what: str
    translated: bool = True

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{'' if self.translated else 'NOT TRANSLATED: '}{self.what}"


@dataclass
class Ported:
    code: str
    notes: list[Note] = field(default_factory=list)

    @property
    def untranslated(self) -> list[Note]:
        return [n for n in self.notes if not n.translated]


def _name(node: cst.BaseExpression) -> str | None:
    """The last name of a callee: ``beam.Map`` -> ``Map``, ``StoreToZarr`` -> ``StoreToZarr``."""
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        return node.attr.value
    return None


def _steps(node: cst.BaseExpression) -> list[cst.BaseExpression]:
    """The steps of a Beam chain ``a | b | "label" >> c``, in order, labels dropped."""
    if isinstance(node, cst.BinaryOperation) and isinstance(node.operator, cst.BitOr):
        return [*_steps(node.left), *_steps(node.right)]
    if isinstance(node, cst.BinaryOperation) and isinstance(node.operator, cst.RightShift):
        return [node.right]
    return [node]


REMOVED = "__forge_port_removed__"
SELF = re.compile(r"\bself\.")  # a PTransform's own attribute, in one of its steps


def _removed(original: cst.BaseStatement) -> cst.SimpleStatementLine:
    """A placeholder for a removed statement, holding its blank lines for the next one (libcst drops a
    removed statement's leading lines; :meth:`_Rewrite.leave_Module` passes them on)."""
    return cst.SimpleStatementLine([cst.Expr(cst.Name(REMOVED))], leading_lines=original.leading_lines)


def _pass_on_blank_lines(body: Sequence[cst.BaseStatement]) -> list[cst.BaseStatement]:
    kept: list[cst.BaseStatement] = []
    carried: Sequence[cst.EmptyLine] = ()
    for statement in body:
        if m.matches(statement, m.SimpleStatementLine(body=[m.Expr(m.Name(REMOVED))])):
            carried = carried or statement.leading_lines
            continue
        if carried and not statement.leading_lines and kept:
            statement = statement.with_changes(leading_lines=carried)
        carried = ()
        kept.append(statement)
    return kept


def _tidy(args: list[cst.Arg], last_comma: cst.Comma | cst.MaybeSentinel) -> list[cst.Arg]:
    """Arguments left after some were removed: a comma after each but the last, which takes the comma
    (or none) that the call's last argument had."""
    if not args:
        return args
    default = cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
    tidy = [a if isinstance(a.comma, cst.Comma) else a.with_changes(comma=default) for a in args[:-1]]
    return [*tidy, args[-1].with_changes(comma=last_comma)]


def _callee(node: cst.BaseExpression) -> str | None:
    return _name(node.func) if isinstance(node, cst.Call) else None


def _kwargs(call: cst.Call) -> dict[str, cst.BaseExpression]:
    return {a.keyword.value: a.value for a in call.args if a.keyword is not None}


@dataclass
class _Step:
    """One per-dataset step: ``how`` is ``map`` (f(item) -> item), ``maptuple`` (f(index, ds) -> item),
    ``ds`` (f(ds) -> ds) or ``expr`` (an expression of ``ds``)."""

    how: str
    fn: str
    extra: str = (
        ""  # the step's further arguments: beam.Map(f, *args, **kwargs) calls f(item, *args, **kwargs)
    )


class _Scan(cst.CSTVisitor):
    """What the rewrite needs to know first: Beam's alias, and what each PTransform subclass does."""

    METADATA_DEPENDENCIES = (PositionProvider,)

    def __init__(self, module: cst.Module):
        self.module = module
        self.beam: set[str] = set()
        self.transforms: dict[str, list[_Step] | None] = {}  # class -> its steps (None: unrecognized)

    def visit_Import(self, node: cst.Import) -> None:
        for alias in node.names:
            if self.module.code_for_node(alias.name) == "apache_beam":
                self.beam.add(alias.asname.name.value if alias.asname else "apache_beam")

    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        if not any(_name(b.value) == "PTransform" for b in node.bases):
            return
        expand = next(
            (s for s in node.body.body if isinstance(s, cst.FunctionDef) and s.name.value == "expand"), None
        )
        if expand is None or len(expand.params.params) < 2:
            self.transforms[node.name.value] = None
            return
        pcoll = expand.params.params[1].name.value
        returns = m.findall(expand, m.Return())
        if len(returns) != 1 or returns[0].value is None:
            self.transforms[node.name.value] = None
            return
        chain = _steps(returns[0].value)
        if not (isinstance(chain[0], cst.Name) and chain[0].value == pcoll):
            self.transforms[node.name.value] = None
            return
        steps = [step_of(self.module, s, node.name.value) for s in chain[1:]]
        self.transforms[node.name.value] = None if None in steps else steps


def step_of(module: cst.Module, node: cst.BaseExpression, owner: str | None = None) -> _Step | None:
    """A ``beam.Map(f)`` or ``beam.MapTuple(f)`` step as a per-dataset step (``self.f`` in a PTransform
    ``owner`` is its class's function)."""
    if not isinstance(node, cst.Call) or _name(node.func) not in ("Map", "MapTuple") or not node.args:
        return None
    fn = node.args[0].value
    if _name(node.func) == "MapTuple" and m.matches(
        fn,
        m.Lambda(
            params=m.Parameters(params=[m.Param(), m.Param()]),
            body=m.Tuple(elements=[m.Element(m.Name()), m.Element()]),
        ),
    ):
        # lambda index, ds: (index, <an expression of ds alone>)
        index, ds = (p.name.value for p in fn.params.params)
        first, second = fn.body.elements
        uses_index = any(n.value == index for n in m.findall(second.value, m.Name()))
        if first.value.value == index and not uses_index:
            expr = module.code_for_node(second.value)
            if m.matches(second.value, m.Call(args=[m.Arg(m.Name(ds))])):
                return _Step("ds", module.code_for_node(second.value.func))
            return _Step("expr", expr if ds == "ds" else f"(lambda {ds}: {expr})(ds)")
    code = module.code_for_node(fn)
    if isinstance(fn, cst.Lambda):
        code = f"({code})"
    extra = ", ".join(
        f"{a.star}{a.keyword.value + '=' if a.keyword else ''}{module.code_for_node(a.value)}"
        for a in node.args[1:]
    )
    return _Step("map" if _name(node.func) == "Map" else "maptuple", code, extra)


SUPER_INIT = m.SimpleStatementLine(
    body=[m.Expr(m.Call(func=m.Attribute(value=m.Call(func=m.Name("super")), attr=m.Name("__init__"))))]
)


def _without_base_init(statement: cst.BaseStatement) -> cst.BaseStatement:
    """A former PTransform's ``__init__`` without its ``super().__init__(...)`` (Beam's label): the class
    has no base any more."""
    if not (isinstance(statement, cst.FunctionDef) and statement.name.value == "__init__"):
        return statement
    body = [s for s in statement.body.body if not m.matches(s, SUPER_INIT)]
    return statement.with_changes(
        body=statement.body.with_changes(body=body or [cst.SimpleStatementLine([cst.Pass()])])
    )


class _Rewrite(cst.CSTTransformer):
    METADATA_DEPENDENCIES = (PositionProvider,)

    def __init__(self, module: cst.Module, scan: _Scan):
        self.module, self.scan = module, scan
        self.notes: list[Note] = []
        self.dropped: set[str] = set()  # names whose imports are gone
        self.wrappers: list[cst.BaseStatement] = []  # module-level functions to add before the recipe

    def line(self, node: cst.CSTNode) -> int:
        return self.get_metadata(PositionProvider, node).start.line

    def note(self, node: cst.CSTNode, what: str, translated: bool = True) -> None:
        self.notes.append(Note(self.line(node), what, translated))

    # -- imports ---------------------------------------------------------------------------------
    def leave_Import(self, original: cst.Import, updated: cst.Import) -> cst.Import | cst.RemovalSentinel:
        keep = []
        for alias in updated.names:
            name = self.module.code_for_node(alias.name)
            if name.split(".")[0] in ("apache_beam", "pangeo_forge_recipes"):
                self.dropped.add(alias.asname.name.value if alias.asname else name.split(".")[0])
                self.note(original, f"import {name}: removed (forge runs on Prefect and Dask, not Beam)")
            else:
                keep.append(alias.with_changes(comma=cst.MaybeSentinel.DEFAULT))
        return updated.with_changes(names=keep) if keep else cst.RemovalSentinel.REMOVE

    def leave_ImportFrom(
        self, original: cst.ImportFrom, updated: cst.ImportFrom
    ) -> cst.ImportFrom | cst.Import | cst.RemovalSentinel:
        module = self.module.code_for_node(updated.module) if updated.module else ""
        root = module.split(".")[0]
        if root not in ("pangeo_forge_recipes", "apache_beam") or isinstance(updated.names, cst.ImportStar):
            return updated
        modules = [a for a in updated.names if a.name.value in SUBMODULES]
        if module == "pangeo_forge_recipes" and modules and len(modules) == len(updated.names):
            # ``patterns.ConcatDim(...)``, ``recipes.XarrayZarrRecipe(...)``: forge has those names
            names = [(a.asname.name.value if a.asname else a.name.value) for a in modules]
            aliases = ", ".join(f"forge as {n}" for n in names)
            self.note(original, f"from pangeo_forge_recipes import {', '.join(names)} -> import {aliases}")
            return cst.Import(
                names=[cst.ImportAlias(cst.Name("forge"), asname=cst.AsName(cst.Name(n))) for n in names]
            )
        forge_names, gone = [], []
        for alias in updated.names:
            name = alias.name.value
            if root == "pangeo_forge_recipes" and name in FORGE_NAMES:
                forge_names.append(name)
            elif root == "pangeo_forge_recipes" and name in RENAMED:
                forge_names.append(RENAMED[name])
            else:
                gone.append(name)
                self.dropped.add(alias.asname.name.value if alias.asname else name)
        if gone:
            self.note(original, f"from {module} import {', '.join(gone)}: removed")
        if not forge_names:
            return cst.RemovalSentinel.REMOVE
        self.note(original, f"from {module} -> from forge import {', '.join(forge_names)}")
        return updated.with_changes(
            module=cst.Name("forge"),
            names=[cst.ImportAlias(cst.Name(n)) for n in forge_names],
            relative=[],
        )

    def visit_Module(self, node: cst.Module) -> None:
        self.needs: set[str] = set()  # forge names the rewrite uses that the module may not import

    def leave_Module(self, original: cst.Module, updated: cst.Module) -> cst.Module:
        """``from forge import`` what the rewrite uses, beside what the module imported from pangeo-forge."""

        def is_forge_import(statement: cst.CSTNode) -> bool:
            return m.matches(statement, m.SimpleStatementLine(body=[m.ImportFrom(module=m.Name("forge"))]))

        body = _pass_on_blank_lines(updated.body)
        first = next((i for i, s in enumerate(body) if is_forge_import(s)), None)
        names = [a.name.value for s in body if is_forge_import(s) for a in s.body[0].names]
        names = list(dict.fromkeys([*names, *sorted(self.needs)]))
        if not names:
            return updated.with_changes(body=body)
        imports = cst.parse_statement(f"from forge import {', '.join(names)}")
        if first is None:
            is_import = m.SimpleStatementLine(body=[m.Import() | m.ImportFrom()])
            first = max((i + 1 for i, s in enumerate(body) if m.matches(s, is_import)), default=0)
            body.insert(first, imports)
        else:
            body[first] = imports.with_changes(leading_lines=body[first].leading_lines)
        body = [s for i, s in enumerate(body) if i == first or not is_forge_import(s)]
        return updated.with_changes(body=body)

    # -- Beam PTransforms --------------------------------------------------------------------------
    def leave_ClassDef(self, original: cst.ClassDef, updated: cst.ClassDef) -> cst.BaseStatement:
        name = original.name.value
        if name not in self.scan.transforms:
            return updated
        steps = self.scan.transforms[name]
        if steps == []:
            self.note(original, f"class {name}: a PTransform that returns its input unchanged: removed")
            return _removed(original)
        if steps is None:
            self.note(original, f"class {name}: a PTransform forge cannot run as a per-input step", False)
            return updated
        body = [
            _without_base_init(s)
            for s in updated.body.body
            if not (isinstance(s, cst.FunctionDef) and s.name.value == "expand")
        ]
        self.note(original, f"class {name}: no longer a PTransform; its steps run on every input")
        return updated.with_changes(
            bases=[],
            lpar=cst.MaybeSentinel.DEFAULT,
            rpar=cst.MaybeSentinel.DEFAULT,
            body=updated.body.with_changes(body=body or [cst.SimpleStatementLine([cst.Pass()])]),
        )

    # -- annotations that name what is gone ------------------------------------------------------
    def _gone(self, node: cst.CSTNode) -> bool:
        code = self.module.code_for_node(node) if node is not None else ""
        if "FSStore" in code or "PCollection" in code:
            return True
        return any(n.value in self.dropped for n in m.findall(node, m.Name()))

    def leave_Param(self, original: cst.Param, updated: cst.Param) -> cst.Param:
        if original.annotation is not None and self._gone(original.annotation.annotation):
            what = "it names pangeo-forge, Beam or zarr 2"
            self.note(original, f"parameter {original.name.value}: annotation dropped ({what})")
            return updated.with_changes(annotation=None)
        return updated

    def leave_FunctionDef(self, original: cst.FunctionDef, updated: cst.FunctionDef) -> cst.FunctionDef:
        if original.returns is not None and self._gone(original.returns.annotation):
            self.note(original, f"def {original.name.value}: return annotation dropped")
            return updated.with_changes(returns=None)
        return updated

    # -- the recipe ------------------------------------------------------------------------------
    def leave_SimpleStatementLine(
        self, original: cst.SimpleStatementLine, updated: cst.SimpleStatementLine
    ) -> cst.BaseStatement | cst.FlattenSentinel | cst.RemovalSentinel:
        if not updated.body:  # its imports are gone
            return _removed(original)
        if len(original.body) != 1 or not isinstance(original.body[0], cst.Assign):
            return updated
        assign = original.body[0]
        target = self.module.code_for_node(assign.targets[0].target)
        callee = _callee(assign.value)
        if callee in self.dropped:  # config = Config(), and the like
            self.note(original, f"{target} = {callee}(...): removed (forge has no use for it)")
            return _removed(original)
        chain = _steps(assign.value)
        if len(chain) < 2 or _callee(chain[0]) != "Create":
            return updated
        recipe = self.pipeline(original, target, chain)
        statement = updated.with_changes(body=[updated.body[0].with_changes(value=recipe)])
        if not self.wrappers:
            return statement
        two = [cst.EmptyLine(), cst.EmptyLine()]
        wrappers = [w.with_changes(leading_lines=two) for w in self.wrappers]
        self.wrappers = []
        return cst.FlattenSentinel([*wrappers, statement.with_changes(leading_lines=two)])

    def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.Call:
        """0.9's ``XarrayZarrRecipe(...)`` and ``HDFReferenceRecipe(...)``: the arguments forge has, the
        pattern first; references go to kerchunk JSON, as 0.9 wrote them."""
        callee = _name(original.func)
        if callee not in ("XarrayZarrRecipe", "HDFReferenceRecipe"):
            return updated
        kept, dropped = KEPT_ARGS, DROPPED_ARGS
        if callee == "HDFReferenceRecipe":
            kept, dropped = REFERENCE_KEPT_ARGS, REFERENCE_DROPPED_ARGS
            updated = updated.with_changes(func=cst.Name("ReferenceRecipe"))
            self.note(original, 'HDFReferenceRecipe(...) -> ReferenceRecipe(..., target_format="json")')
        args = []
        for arg in updated.args:
            key = arg.keyword.value if arg.keyword else None
            if key is None or key in kept:
                args.append(arg)
            elif callee == "HDFReferenceRecipe" and key in REFERENCE_RENAMED_ARGS:
                new_key = REFERENCE_RENAMED_ARGS[key]
                args.append(arg.with_changes(keyword=cst.Name(new_key)))
                self.note(original, f"{key}= -> {new_key}= (how the S3 sources are read)")
            elif key == "file_pattern":
                args.insert(0, arg.with_changes(keyword=None, equal=cst.MaybeSentinel.DEFAULT))
                self.note(original, "file_pattern= -> the pattern as the first argument")
            elif key in dropped:
                self.note(original, f"{key}=: dropped ({dropped[key]})")
            else:
                self.note(original, f"{key}=: forge has no equivalent; removed", False)
        last_comma = updated.args[-1].comma if updated.args else cst.MaybeSentinel.DEFAULT
        if callee == "HDFReferenceRecipe":
            tight = cst.AssignEqual(
                whitespace_before=cst.SimpleWhitespace(""), whitespace_after=cst.SimpleWhitespace("")
            )
            args.append(cst.Arg(cst.SimpleString('"json"'), keyword=cst.Name("target_format"), equal=tight))
        return updated.with_changes(args=_tidy(args, last_comma))

    def pipeline(
        self, where: cst.CSTNode, target: str, chain: Sequence[cst.BaseExpression]
    ) -> cst.BaseExpression:
        """``beam.Create(pattern.items()) | ...`` as ``XarrayZarrRecipe(pattern, ...)``."""
        create = chain[0]
        pattern = "pattern"
        if create.args and m.matches(create.args[0].value, m.Call(func=m.Attribute(attr=m.Name("items")))):
            pattern = self.module.code_for_node(create.args[0].value.func.value)
        else:
            self.note(where, "beam.Create(...) of something other than pattern.items()", False)
        kwargs: dict[str, str] = {}
        steps: list[_Step] = []
        tests: list[str] = []
        stored = False
        recipe_class = "XarrayZarrRecipe"
        for step in chain[1:]:
            name = _callee(step)
            args = _kwargs(step) if isinstance(step, cst.Call) else {}
            code = self.module.code_for_node(step)
            if name in BUILT_IN_STEPS:
                self.note(where, f"{name}: {BUILT_IN_STEPS[name]}")
                if "open_kwargs" in args:
                    fix = "give them to FilePattern(fsspec_open_kwargs=...)"
                    self.note(where, f"OpenURLWithFSSpec(open_kwargs=...): {fix}", False)
            elif name in REFERENCE_STEPS:
                recipe_class = "ReferenceRecipe"
                self.note(where, f"{name}: {REFERENCE_STEPS[name]}")
                if name == "OpenWithKerchunk" and "storage_options" in args:
                    kwargs["storage_options"] = self.module.code_for_node(args["storage_options"])
                    self.note(where, "OpenWithKerchunk(storage_options=...): the recipe's storage_options")
                if name == "WriteCombinedReference":
                    stored = True
                    output = args.get("output_file_name")
                    parquet = output is not None and "parquet" in self.module.code_for_node(output)
                    kwargs["target_format"] = '"parquet"' if parquet else '"json"'
            elif name == "OpenWithXarray":
                if "xarray_open_kwargs" in args:
                    kwargs["xarray_open_kwargs"] = self.module.code_for_node(args["xarray_open_kwargs"])
                self.note(
                    where, "OpenWithXarray: forge opens every input with xarray (the pattern's file_type)"
                )
            elif name == "StoreToZarr":
                stored = True
                kwargs.update({k: self.module.code_for_node(args[k]) for k in STORE_ARGS if k in args})
                for key in sorted(set(args) & set(STORE_UNTRANSLATED)):
                    self.note(where, f"StoreToZarr({key}=...): {STORE_UNTRANSLATED[key]}", False)
                if "store_name" in args:
                    store_name = self.module.code_for_node(args["store_name"])
                    self.note(
                        where, f"StoreToZarr(store_name={store_name}): the store is named after the recipe"
                    )
            elif name in ("Map", "MapTuple") and stored:
                tests.append(self.module.code_for_node(step.args[0].value))
                self.note(
                    where, f"{code}: a check of the finished store, now in tests=[...] (it fails the run)"
                )
            elif name in ("Map", "MapTuple") and (parsed := step_of(self.module, step)):
                steps.append(parsed)
                self.note(where, f"{code}: now part of process_input")
            elif name in self.scan.transforms and self.scan.transforms[name] is not None:
                steps += self.bound(self.scan.transforms[name], code, target, name)
                if self.scan.transforms[name]:
                    self.note(where, f"{name}(...): its steps are now part of process_input")
            else:
                self.note(where, f"{code}: a step forge cannot translate; removed", False)
        self.needs.add(recipe_class)
        if recipe_class == "ReferenceRecipe" and (steps or tests):
            self.note(where, "steps on references or on the combined references: forge has none", False)
            steps, tests = [], []
        if steps:
            kwargs["process_input"] = self.process_input(steps, target)
        if tests:
            kwargs["tests"] = f"[{', '.join(tests)}]"
        self.note(where, f"the Beam pipeline -> {recipe_class}(" + ", ".join([pattern, *kwargs]) + ")")
        return cst.parse_expression(
            f"{recipe_class}(\n    {pattern},\n" + "".join(f"    {k}={v},\n" for k, v in kwargs.items()) + ")"
        )

    def bound(self, steps: Sequence[_Step], made: str, target: str, name: str) -> list[_Step]:
        """A PTransform's steps, their ``self`` the transform as the pipeline makes it (``made``: its
        ``__init__`` runs, so methods see the attributes it sets): a module-level instance."""
        uses_self = [s for s in steps if SELF.search(s.fn) or SELF.search(s.extra)]
        if not uses_self:
            return list(steps)
        instance = f"_{target}_{re.sub(r'(?<=[a-z0-9])(?=[A-Z])', '_', name).lower()}"
        self.wrappers.append(cst.parse_statement(f"{instance} = {made}\n"))
        return [
            _Step(s.how, SELF.sub(f"{instance}.", s.fn), SELF.sub(f"{instance}.", s.extra)) for s in steps
        ]

    def process_input(self, steps: Sequence[_Step], target: str) -> str:
        """The per-dataset steps as one ``process_input``: the function itself when there is one of
        the ``f(ds)`` kind, else a function ``_{target}_process_input`` that runs them in turn (Beam-style
        steps get an item with no index)."""
        if len(steps) == 1 and steps[0].how == "ds":
            return steps[0].fn
        calls = {
            "ds": "    ds = {fn}(ds{extra})\n",
            "expr": "    ds = {fn}\n",
            "map": "    ds = {fn}((None, ds){extra})[1]\n",
            "maptuple": "    ds = {fn}(None, ds{extra})[1]\n",
        }
        name = f"_{target}_process_input"
        body = "".join(calls[s.how].format(fn=s.fn, extra=f", {s.extra}" if s.extra else "") for s in steps)
        self.wrappers.append(
            cst.parse_statement(
                f"def {name}(ds):\n"
                '    """forge port: the Beam steps, in order, on each dataset (its index: None)."""\n'
                f"{body}    return ds\n"
            )
        )
        return name


def port_source(code: str) -> Ported:
    """``code``, a pangeo-forge-recipes recipe module, as a forge recipe module."""
    module = cst.parse_module(code)
    wrapper = MetadataWrapper(module)
    scan = _Scan(wrapper.module)
    wrapper.visit(scan)
    rewrite = _Rewrite(wrapper.module, scan)
    out = wrapper.visit(rewrite)
    notes = sorted(rewrite.notes, key=lambda n: n.line)
    # What is still used of what is gone
    for node in m.findall(out, m.Name()):
        if node.value in rewrite.dropped:
            notes.append(Note(0, f"{node.value} is still used, but forge has no {node.value}", False))
            break
    return Ported(out.code, notes)
