//! A restricted unpickler: it interprets only the opcodes a torch state dict
//! uses and resolves only an allowlist of globals (OrderedDict, the tensor
//! rebuild functions, the storage classes). Nothing is ever imported or called:
//! an allowed global is a tag that the interpreter evaluates itself, and any
//! other global is refused with an error naming it.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};

/// Element type of a torch storage (`torch.FloatStorage` and friends).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StorageKind {
    /// `DoubleStorage`.
    F64,
    /// `FloatStorage`.
    F32,
    /// `HalfStorage`.
    F16,
    /// `BFloat16Storage`.
    BF16,
    /// `LongStorage`.
    I64,
    /// `IntStorage`.
    I32,
    /// `ShortStorage`.
    I16,
    /// `CharStorage`.
    I8,
    /// `ByteStorage`.
    U8,
    /// `BoolStorage`.
    Bool,
}

impl StorageKind {
    fn from_class(name: &str) -> Option<StorageKind> {
        Some(match name {
            "DoubleStorage" => StorageKind::F64,
            "FloatStorage" => StorageKind::F32,
            "HalfStorage" => StorageKind::F16,
            "BFloat16Storage" => StorageKind::BF16,
            "LongStorage" => StorageKind::I64,
            "IntStorage" => StorageKind::I32,
            "ShortStorage" => StorageKind::I16,
            "CharStorage" => StorageKind::I8,
            "ByteStorage" => StorageKind::U8,
            "BoolStorage" => StorageKind::Bool,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            StorageKind::F64 | StorageKind::I64 => 8,
            StorageKind::F32 | StorageKind::I32 => 4,
            StorageKind::F16 | StorageKind::BF16 | StorageKind::I16 => 2,
            StorageKind::I8 | StorageKind::U8 | StorageKind::Bool => 1,
        }
    }

    /// The torch name of the element type.
    pub fn name(self) -> &'static str {
        match self {
            StorageKind::F64 => "float64",
            StorageKind::F32 => "float32",
            StorageKind::F16 => "float16",
            StorageKind::BF16 => "bfloat16",
            StorageKind::I64 => "int64",
            StorageKind::I32 => "int32",
            StorageKind::I16 => "int16",
            StorageKind::I8 => "int8",
            StorageKind::U8 => "uint8",
            StorageKind::Bool => "bool",
        }
    }
}

/// The globals a state dict may reference.
#[derive(Debug, Clone, PartialEq)]
pub enum Global {
    /// `collections.OrderedDict`.
    OrderedDict,
    /// `torch._utils._rebuild_tensor_v2`.
    RebuildTensorV2,
    /// `torch._utils._rebuild_parameter`.
    RebuildParameter,
    /// A `torch.*Storage` class.
    Storage(StorageKind),
}

/// The opcodes the interpreter accepts, by their names in CPython's `pickletools`.
mod op {
    // Control.
    pub const PROTO: u8 = 0x80;
    pub const FRAME: u8 = 0x95;
    pub const STOP: u8 = b'.';
    pub const MARK: u8 = b'(';
    pub const POP: u8 = b'0';
    pub const POP_MARK: u8 = b'1';
    pub const DUP: u8 = b'2';
    // Scalars.
    pub const NONE: u8 = b'N';
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const LONG1: u8 = 0x8a;
    pub const LONG4: u8 = 0x8b;
    pub const INT: u8 = b'I';
    pub const LONG: u8 = b'L';
    pub const BINFLOAT: u8 = b'G';
    pub const FLOAT: u8 = b'F';
    // Strings and bytes.
    pub const BINUNICODE: u8 = b'X';
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE8: u8 = 0x8d;
    pub const SHORT_BINSTRING: u8 = b'U';
    pub const BINSTRING: u8 = b'T';
    pub const BINBYTES: u8 = b'B';
    pub const SHORT_BINBYTES: u8 = b'C';
    pub const BINBYTES8: u8 = 0x8e;
    pub const BYTEARRAY8: u8 = 0x96;
    // Tuples, lists, dicts.
    pub const EMPTY_TUPLE: u8 = b')';
    pub const TUPLE: u8 = b't';
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const EMPTY_LIST: u8 = b']';
    pub const LIST: u8 = b'l';
    pub const APPEND: u8 = b'a';
    pub const APPENDS: u8 = b'e';
    pub const EMPTY_DICT: u8 = b'}';
    pub const DICT: u8 = b'd';
    pub const SETITEM: u8 = b's';
    pub const SETITEMS: u8 = b'u';
    // Memo.
    pub const PUT: u8 = b'p';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const MEMOIZE: u8 = 0x94;
    pub const GET: u8 = b'g';
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
    // Objects.
    pub const GLOBAL: u8 = b'c';
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const BINPERSID: u8 = b'Q';
    pub const REDUCE: u8 = b'R';
    pub const BUILD: u8 = b'b';
}

fn resolve_global(path: &Path, module: &str, name: &str) -> Result<Global> {
    let g = match (module, name) {
        ("collections", "OrderedDict") => Some(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
        ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
        ("torch", cls) => StorageKind::from_class(cls).map(Global::Storage),
        _ => None,
    };
    g.ok_or_else(|| {
        Error::format(
            path,
            format!(
                "refusing to unpickle: it references the global `{module}.{name}`, which a \
                 tensor state dict never needs (loading it could run code)"
            ),
        )
    })
}

/// A storage reference from a persistent id: `('storage', kind, key, location, numel)`.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageRef {
    /// Element type.
    pub kind: StorageKind,
    /// The storage's record name in the archive (`data/KEY`).
    pub key: String,
    /// Number of elements.
    pub numel: usize,
}

/// A tensor as `_rebuild_tensor_v2` describes it, before its bytes are read.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    /// The storage the tensor views.
    pub storage: StorageRef,
    /// Offset of the first element in the storage, in elements.
    pub offset: usize,
    /// Logical shape.
    pub shape: Vec<usize>,
    /// Strides in elements.
    pub stride: Vec<usize>,
}

/// A value produced by the restricted unpickler.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
    /// A bytes object.
    Bytes(Vec<u8>),
    /// A tuple.
    Tuple(Vec<Value>),
    /// A list.
    List(Vec<Value>),
    /// A dict or OrderedDict, in insertion order (a later equal key wins on lookup).
    Dict(Vec<(Value, Value)>),
    /// A global this unpickler allows.
    Global(Global),
    /// A storage from a persistent id.
    Storage(StorageRef),
    /// A rebuilt tensor, its bytes not yet read.
    Tensor(TensorSpec),
}

impl Value {
    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is one (bools count as 0/1 as in Python).
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    /// Looks up a string key in a dict.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => items
                .iter()
                .rev()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }

    /// Number of nodes, stopping early once `limit` is passed (bounds the cost of copies).
    fn weight(&self, limit: usize) -> usize {
        let mut n = 1;
        let add = |v: &Value, n: &mut usize| {
            if *n <= limit {
                *n += v.weight(limit - *n);
            }
        };
        match self {
            Value::Tuple(v) | Value::List(v) => v.iter().for_each(|x| add(x, &mut n)),
            Value::Dict(v) => v.iter().for_each(|(a, b)| {
                add(a, &mut n);
                add(b, &mut n)
            }),
            _ => {}
        }
        n
    }

    /// Nesting depth, stopping once `limit` is passed.
    fn depth(&self, limit: usize) -> usize {
        if limit == 0 {
            return 1;
        }
        let children = match self {
            Value::Tuple(v) | Value::List(v) => v.iter().map(|x| x.depth(limit - 1)).max(),
            Value::Dict(v) => v
                .iter()
                .map(|(a, b)| a.depth(limit - 1).max(b.depth(limit - 1)))
                .max(),
            _ => None,
        };
        1 + children.unwrap_or(0)
    }
}

/// Deepest nesting accepted: state dicts nest two or three levels; deep nesting
/// from hostile input would overflow the stack when values are dropped.
const MAX_DEPTH: usize = 64;
/// Most value nodes that copies (memo gets, DUP) may create, against exponential blow-up.
const MAX_COPIED_NODES: usize = 1 << 22;
/// Most memo entries.
const MAX_MEMO: usize = 1 << 20;

struct Vm<'a> {
    path: &'a Path,
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u64, Memo>,
    copied: usize,
}

/// Interprets the pickle in `data`; errors name `path`. Never executes anything.
pub fn unpickle(path: &Path, data: &[u8]) -> Result<Value> {
    let mut vm = Vm {
        path,
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        copied: 0,
    };
    vm.run()
}

impl Vm<'_> {
    fn err(&self, msg: impl std::fmt::Display) -> Error {
        Error::format(
            self.path,
            format!("pickle byte {}: {msg}", self.pos.saturating_sub(1)),
        )
    }

    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.data.len())
            .ok_or_else(|| self.err("truncated pickle"))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn len(&mut self, n: u64) -> Result<usize> {
        usize::try_from(n)
            .ok()
            .filter(|n| *n <= self.data.len() - self.pos)
            .ok_or_else(|| self.err("length runs past the end of the pickle"))
    }
    fn line(&mut self) -> Result<String> {
        let rest = &self.data[self.pos..];
        let nl = rest
            .iter()
            .position(|b| *b == b'\n')
            .ok_or_else(|| self.err("unterminated text line"))?;
        let s = String::from_utf8_lossy(&rest[..nl]).into_owned();
        self.pos += nl + 1;
        Ok(s)
    }
    fn utf8(&mut self, n: usize) -> Result<Value> {
        let b = self.take(n)?.to_vec();
        String::from_utf8(b)
            .map(Value::Str)
            .map_err(|_| self.err("invalid UTF-8 in a string"))
    }

    fn pop(&mut self) -> Result<Value> {
        if self.marks.last().is_some_and(|m| *m >= self.stack.len()) {
            return Err(self.err("stack underflow at a mark"));
        }
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }
    fn top(&mut self) -> Result<&mut Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err("stack underflow"));
        }
        let i = self.stack.len() - 1;
        Ok(&mut self.stack[i])
    }
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| self.err("no mark on the stack"))?;
        Ok(self.stack.split_off(m.min(self.stack.len())))
    }
    fn push(&mut self, v: Value) {
        self.stack.push(v);
    }
    fn check_child(&self, v: &Value) -> Result<()> {
        if v.depth(MAX_DEPTH) >= MAX_DEPTH {
            return Err(self.err(format!("values nest deeper than {MAX_DEPTH} levels")));
        }
        Ok(())
    }
    /// Charges a copy of stack slot `i` against the copy budget.
    fn charge(&mut self, i: usize) -> Result<()> {
        let budget = MAX_COPIED_NODES.saturating_sub(self.copied);
        let w = self.stack[i].weight(budget);
        if w > budget {
            return Err(self.err("pickle copies too many values (memo bomb?)"));
        }
        self.copied += w;
        Ok(())
    }
    fn memo_put(&mut self, key: u64) -> Result<()> {
        if self.memo.len() >= MAX_MEMO {
            return Err(self.err("too many memo entries"));
        }
        self.top()?;
        let i = self.stack.len() - 1;
        let m = if matches!(self.stack[i], Value::List(_) | Value::Dict(_)) {
            // Lists and dicts are memoized before they are filled; a snapshot would be
            // wrong, and state dicts never share them, so a later get is refused.
            Memo::Mutable
        } else {
            self.charge(i)?;
            Memo::Value(self.stack[i].clone())
        };
        self.memo.insert(key, m);
        Ok(())
    }
    fn memo_get(&mut self, key: u64) -> Result<()> {
        let budget = MAX_COPIED_NODES.saturating_sub(self.copied);
        let v = match self.memo.get(&key) {
            Some(Memo::Value(v)) => {
                let w = v.weight(budget);
                if w > budget {
                    return Err(self.err("pickle copies too many values (memo bomb?)"));
                }
                self.copied += w;
                v.clone()
            }
            Some(Memo::Mutable) => {
                return Err(
                    self.err("a shared reference to a list or dict (a state dict never has one)")
                )
            }
            None => return Err(self.err(format!("memo key {key} was never stored"))),
        };
        self.push(v);
        Ok(())
    }

    fn not_allowed(&self, code: u8) -> Error {
        self.err(format!(
            "opcode 0x{code:02x} ({:?}) is not allowed in a state dict",
            code as char
        ))
    }

    fn run(&mut self) -> Result<Value> {
        loop {
            let code = self.u8()?;
            match code {
                op::STOP => return self.pop(),
                op::PROTO | op::FRAME | op::MARK | op::POP | op::POP_MARK | op::DUP => {
                    self.control(code)?
                }
                op::NONE
                | op::NEWTRUE
                | op::NEWFALSE
                | op::BININT
                | op::BININT1
                | op::BININT2
                | op::LONG1
                | op::LONG4
                | op::INT
                | op::LONG
                | op::BINFLOAT
                | op::FLOAT => {
                    let v = self.scalar(code)?;
                    self.push(v)
                }
                op::BINUNICODE
                | op::SHORT_BINUNICODE
                | op::BINUNICODE8
                | op::SHORT_BINSTRING
                | op::BINSTRING
                | op::BINBYTES
                | op::SHORT_BINBYTES
                | op::BINBYTES8
                | op::BYTEARRAY8 => {
                    let v = self.string(code)?;
                    self.push(v)
                }
                op::EMPTY_TUPLE | op::TUPLE | op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                    let v = self.tuple(code)?;
                    self.push(v)
                }
                op::EMPTY_LIST | op::LIST | op::APPEND | op::APPENDS => self.list(code)?,
                op::EMPTY_DICT | op::DICT | op::SETITEM | op::SETITEMS => self.dict(code)?,
                op::PUT | op::BINPUT | op::LONG_BINPUT | op::MEMOIZE => {
                    let key = self.memo_key(code)?;
                    self.memo_put(key)?
                }
                op::GET | op::BINGET | op::LONG_BINGET => {
                    let key = self.memo_key(code)?;
                    self.memo_get(key)?
                }
                op::GLOBAL | op::STACK_GLOBAL | op::BINPERSID | op::REDUCE | op::BUILD => {
                    self.object(code)?
                }
                other => return Err(self.not_allowed(other)),
            }
        }
    }

    /// Protocol header, frames, marks and stack shuffling.
    fn control(&mut self, code: u8) -> Result<()> {
        match code {
            op::PROTO => {
                let p = self.u8()?;
                if p > 5 {
                    return Err(self.err(format!("unsupported pickle protocol {p}")));
                }
            }
            op::FRAME => {
                self.u64()?; // a hint only
            }
            op::MARK => self.marks.push(self.stack.len()),
            op::POP => {
                self.pop()?;
            }
            op::POP_MARK => {
                self.pop_mark()?;
            }
            op::DUP => {
                self.top()?;
                let i = self.stack.len() - 1;
                if matches!(self.stack[i], Value::List(_) | Value::Dict(_)) {
                    return Err(self.err("DUP of a list or dict is not supported"));
                }
                self.charge(i)?;
                let v = self.stack[i].clone();
                self.push(v);
            }
            other => return Err(self.not_allowed(other)),
        }
        Ok(())
    }

    /// None, booleans, integers and floats, binary and text forms.
    fn scalar(&mut self, code: u8) -> Result<Value> {
        Ok(match code {
            op::NONE => Value::None,
            op::NEWTRUE => Value::Bool(true),
            op::NEWFALSE => Value::Bool(false),
            op::BININT => Value::Int(self.u32()? as i32 as i64),
            op::BININT1 => Value::Int(self.u8()? as i64),
            op::BININT2 => Value::Int(self.u16()? as i64),
            op::LONG1 | op::LONG4 => {
                let n = if code == op::LONG1 {
                    self.u8()? as u64
                } else {
                    self.u32()? as u64
                };
                let n = self.len(n)?;
                if n > 8 {
                    return Err(self.err("integer wider than 64 bits"));
                }
                let b = self.take(n)?;
                let mut v: i64 = 0;
                for (i, byte) in b.iter().enumerate() {
                    v |= (*byte as i64) << (8 * i);
                }
                if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n); // two's complement sign of a short LONG1
                }
                Value::Int(v)
            }
            op::INT | op::LONG => {
                let s = self.line()?;
                let t = s.trim_end_matches('L');
                match t {
                    "00" => Value::Bool(false),
                    "01" => Value::Bool(true),
                    _ => Value::Int(
                        t.parse::<i64>()
                            .map_err(|_| self.err(format!("bad integer literal {t:?}")))?,
                    ),
                }
            }
            op::BINFLOAT => {
                let b = self.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                Value::Float(f64::from_be_bytes(a))
            }
            op::FLOAT => {
                let s = self.line()?;
                let v = s
                    .trim()
                    .parse::<f64>()
                    .map_err(|_| self.err(format!("bad float literal {s:?}")))?;
                Value::Float(v)
            }
            other => return Err(self.not_allowed(other)),
        })
    }

    /// Text (UTF-8, and Python 2 byte strings read as Latin-1) and bytes.
    fn string(&mut self, code: u8) -> Result<Value> {
        let n = match code {
            op::SHORT_BINUNICODE | op::SHORT_BINSTRING | op::SHORT_BINBYTES => self.u8()? as u64,
            op::BINUNICODE | op::BINSTRING | op::BINBYTES => self.u32()? as u64,
            op::BINUNICODE8 | op::BINBYTES8 | op::BYTEARRAY8 => self.u64()?,
            other => return Err(self.not_allowed(other)),
        };
        let n = self.len(n)?;
        match code {
            op::BINUNICODE | op::SHORT_BINUNICODE | op::BINUNICODE8 => self.utf8(n),
            op::SHORT_BINSTRING | op::BINSTRING => Ok(Value::Str(
                self.take(n)?.iter().map(|b| *b as char).collect(),
            )),
            _ => Ok(Value::Bytes(self.take(n)?.to_vec())),
        }
    }

    /// Tuples: empty, from the mark, or of the top one to three values.
    fn tuple(&mut self, code: u8) -> Result<Value> {
        let n = match code {
            op::EMPTY_TUPLE => return Ok(Value::Tuple(Vec::new())),
            op::TUPLE => return Ok(Value::Tuple(self.pop_mark()?)),
            op::TUPLE1 => 1,
            op::TUPLE2 => 2,
            op::TUPLE3 => 3,
            other => return Err(self.not_allowed(other)),
        };
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(self.pop()?);
        }
        items.reverse();
        for v in &items {
            self.check_child(v)?;
        }
        Ok(Value::Tuple(items))
    }

    /// Lists: created empty or from the mark, then appended to.
    fn list(&mut self, code: u8) -> Result<()> {
        let (items, what) = match code {
            op::EMPTY_LIST => {
                self.push(Value::List(Vec::new()));
                return Ok(());
            }
            op::LIST => {
                let items = self.pop_mark()?;
                self.push(Value::List(items));
                return Ok(());
            }
            op::APPEND => {
                let v = self.pop()?;
                self.check_child(&v)?;
                (vec![v], "APPEND")
            }
            op::APPENDS => {
                let items = self.pop_mark()?;
                for v in &items {
                    self.check_child(v)?;
                }
                (items, "APPENDS")
            }
            other => return Err(self.not_allowed(other)),
        };
        match self.top()? {
            Value::List(l) => l.extend(items),
            other => {
                let k = other.kind();
                return Err(self.err(format!("{what} to a {k}")));
            }
        }
        Ok(())
    }

    /// Dicts: created empty or from the mark's pairs, then filled.
    fn dict(&mut self, code: u8) -> Result<()> {
        match code {
            op::EMPTY_DICT => self.push(Value::Dict(Vec::new())),
            op::DICT => {
                let items = self.pop_mark()?;
                let pairs = self.pairs(items)?;
                self.push(Value::Dict(pairs))
            }
            op::SETITEM => {
                let v = self.pop()?;
                let k = self.pop()?;
                self.set_items(vec![(k, v)])?;
            }
            op::SETITEMS => {
                let items = self.pop_mark()?;
                let pairs = self.pairs(items)?;
                self.set_items(pairs)?;
            }
            other => return Err(self.not_allowed(other)),
        }
        Ok(())
    }

    /// The memo key of a PUT or GET opcode (text line, u8 or u32; MEMOIZE: the next key).
    fn memo_key(&mut self, code: u8) -> Result<u64> {
        Ok(match code {
            op::PUT | op::GET => {
                let s = self.line()?;
                s.parse::<u64>()
                    .map_err(|_| self.err(format!("bad memo key {s:?}")))?
            }
            op::BINPUT | op::BINGET => self.u8()? as u64,
            op::LONG_BINPUT | op::LONG_BINGET => self.u32()? as u64,
            op::MEMOIZE => self.memo.len() as u64,
            other => return Err(self.not_allowed(other)),
        })
    }

    /// Globals (allowlisted), persistent ids (tensor storages), calls and BUILD.
    fn object(&mut self, code: u8) -> Result<()> {
        match code {
            op::GLOBAL => {
                let module = self.line()?;
                let name = self.line()?;
                let g = resolve_global(self.path, &module, &name)?;
                self.push(Value::Global(g))
            }
            op::STACK_GLOBAL => {
                let name = self.pop()?;
                let module = self.pop()?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => {
                        let g = resolve_global(self.path, &m, &n)?;
                        self.push(Value::Global(g))
                    }
                    _ => return Err(self.err("STACK_GLOBAL needs two strings")),
                }
            }
            op::BINPERSID => {
                let pid = self.pop()?;
                let s = self.persistent(pid)?;
                self.push(s)
            }
            op::REDUCE => {
                let args = self.pop()?;
                let f = self.pop()?;
                let v = self.reduce(f, args)?;
                self.push(v)
            }
            op::BUILD => {
                // torch sets OrderedDict attributes (`_metadata`) this way; attributes
                // never change the tensors, so the state is dropped.
                let _state = self.pop()?;
                match self.top()? {
                    Value::Dict(_) | Value::Tensor(_) => {}
                    other => {
                        let k = other.kind();
                        return Err(self.err(format!("BUILD on a {k} is not allowed")));
                    }
                }
            }
            other => return Err(self.not_allowed(other)),
        }
        Ok(())
    }

    fn pairs(&self, items: Vec<Value>) -> Result<Vec<(Value, Value)>> {
        if items.len() % 2 != 0 {
            return Err(self.err("odd number of items for a dict"));
        }
        let mut it = items.into_iter();
        let mut out = Vec::new();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            self.check_child(&k)?;
            self.check_child(&v)?;
            out.push((k, v));
        }
        Ok(out)
    }

    fn set_items(&mut self, pairs: Vec<(Value, Value)>) -> Result<()> {
        for (k, v) in &pairs {
            self.check_child(k)?;
            self.check_child(v)?;
        }
        match self.top()? {
            Value::Dict(d) => {
                d.extend(pairs);
                Ok(())
            }
            other => {
                let k = other.kind();
                Err(self.err(format!("SETITEM on a {k}")))
            }
        }
    }

    fn persistent(&self, pid: Value) -> Result<Value> {
        let bad = || self.err("persistent id is not ('storage', type, key, location, numel)");
        let items = match pid {
            Value::Tuple(t) => t,
            _ => return Err(bad()),
        };
        if items.len() != 5 || items[0].as_str() != Some("storage") {
            return Err(bad());
        }
        let kind = match &items[1] {
            Value::Global(Global::Storage(k)) => *k,
            _ => return Err(bad()),
        };
        let key = match &items[2] {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            _ => return Err(bad()),
        };
        let numel = items[4]
            .as_int()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(bad)?;
        Ok(Value::Storage(StorageRef { kind, key, numel }))
    }

    fn reduce(&self, f: Value, args: Value) -> Result<Value> {
        let args = match args {
            Value::Tuple(a) => a,
            other => return Err(self.err(format!("REDUCE arguments are a {}", other.kind()))),
        };
        match f {
            Value::Global(Global::OrderedDict) => {
                if args.is_empty() {
                    return Ok(Value::Dict(Vec::new()));
                }
                // OrderedDict([(k, v), ...])
                match args.into_iter().next() {
                    Some(Value::List(items)) | Some(Value::Tuple(items)) => {
                        let mut out = Vec::new();
                        for it in items {
                            match it {
                                Value::Tuple(mut kv) if kv.len() == 2 => {
                                    let v = kv.pop().unwrap_or(Value::None);
                                    let k = kv.pop().unwrap_or(Value::None);
                                    out.push((k, v));
                                }
                                _ => return Err(self.err("OrderedDict item is not a pair")),
                            }
                        }
                        Ok(Value::Dict(out))
                    }
                    Some(Value::Dict(d)) => Ok(Value::Dict(d)),
                    _ => Err(self.err("unsupported OrderedDict arguments")),
                }
            }
            Value::Global(Global::RebuildTensorV2) => self.rebuild_tensor(args),
            Value::Global(Global::RebuildParameter) => match args.into_iter().next() {
                Some(t @ Value::Tensor(_)) => Ok(t),
                _ => Err(self.err("_rebuild_parameter without a tensor")),
            },
            Value::Global(g) => Err(self.err(format!("{g:?} cannot be called"))),
            other => Err(self.err(format!("REDUCE on a {}", other.kind()))),
        }
    }

    fn rebuild_tensor(&self, args: Vec<Value>) -> Result<Value> {
        // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
        if args.len() < 4 {
            return Err(self.err("_rebuild_tensor_v2 needs at least 4 arguments"));
        }
        let storage = match &args[0] {
            Value::Storage(s) => s.clone(),
            _ => return Err(self.err("_rebuild_tensor_v2: first argument is not a storage")),
        };
        let to_usize = |v: &Value| v.as_int().and_then(|i| usize::try_from(i).ok());
        let offset =
            to_usize(&args[1]).ok_or_else(|| self.err("_rebuild_tensor_v2: bad storage offset"))?;
        let dims = |v: &Value, what: &str| -> Result<Vec<usize>> {
            match v {
                Value::Tuple(t) | Value::List(t) => t
                    .iter()
                    .map(|x| {
                        to_usize(x)
                            .ok_or_else(|| self.err(format!("_rebuild_tensor_v2: bad {what}")))
                    })
                    .collect(),
                _ => Err(self.err(format!("_rebuild_tensor_v2: {what} is not a tuple"))),
            }
        };
        let shape = dims(&args[2], "size")?;
        let stride = dims(&args[3], "stride")?;
        if shape.len() != stride.len() {
            return Err(self.err("_rebuild_tensor_v2: size and stride differ in rank"));
        }
        Ok(Value::Tensor(TensorSpec {
            storage,
            offset,
            shape,
            stride,
        }))
    }
}

/// A memo entry.
enum Memo {
    Value(Value),
    Mutable,
}
