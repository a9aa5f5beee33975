//! A minimal reader for the Python pickle opcodes that a legacy (pre-1.6, non-zip)
//! `torch.save` stream uses. It builds a value tree and never executes anything: GLOBAL,
//! REDUCE and BINPERSID are kept as data for the caller to interpret.

use anyhow::{bail, Context, Result};

/// A decoded pickle value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer too large for i64 (LONG1), as little-endian two's-complement bytes.
    BigInt(Vec<u8>),
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// `module.name`, a reference to a Python global.
    Global(String, String),
    /// A persistent id (torch uses it to point at tensor storages).
    PersistentId(Box<Value>),
    /// `callable(*args)`, not evaluated.
    Reduce(Box<Value>, Box<Value>),
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        if let Value::Str(s) = self {
            Some(s)
        } else {
            None
        }
    }
    pub fn as_int(&self) -> Option<i64> {
        if let Value::Int(i) = self {
            Some(*i)
        } else {
            None
        }
    }
    pub fn as_tuple(&self) -> Option<&[Value]> {
        if let Value::Tuple(t) = self {
            Some(t)
        } else {
            None
        }
    }
}

enum Item {
    Mark,
    Val(Value),
}

/// Reads one pickle starting at `bytes[*pos]`, leaving `*pos` just after its STOP opcode.
pub fn read(bytes: &[u8], pos: &mut usize) -> Result<Value> {
    let mut stack: Vec<Item> = Vec::new();
    let mut memo: std::collections::HashMap<u32, Value> = Default::default();
    let take = |pos: &mut usize, n: usize| -> Result<&[u8]> {
        let s = bytes
            .get(*pos..*pos + n)
            .context("pickle: unexpected end of data")?;
        *pos += n;
        Ok(s)
    };
    let pop = |stack: &mut Vec<Item>| -> Result<Value> {
        match stack.pop() {
            Some(Item::Val(v)) => Ok(v),
            _ => bail!("pickle: stack underflow"),
        }
    };
    let pop_mark = |stack: &mut Vec<Item>| -> Result<Vec<Value>> {
        let at = stack
            .iter()
            .rposition(|i| matches!(i, Item::Mark))
            .context("pickle: no MARK")?;
        let items = stack.split_off(at + 1);
        stack.pop();
        Ok(items
            .into_iter()
            .map(|i| match i {
                Item::Val(v) => v,
                Item::Mark => unreachable!(),
            })
            .collect())
    };
    loop {
        let op = take(pos, 1)?[0];
        match op {
            0x80 => {
                take(pos, 1)?;
            } // PROTO
            b'.' => return pop(&mut stack), // STOP
            b'}' => stack.push(Item::Val(Value::Dict(vec![]))),
            b']' => stack.push(Item::Val(Value::List(vec![]))),
            b')' => stack.push(Item::Val(Value::Tuple(vec![]))),
            b'(' => stack.push(Item::Mark),
            b'N' => stack.push(Item::Val(Value::None)),
            0x88 => stack.push(Item::Val(Value::Bool(true))),
            0x89 => stack.push(Item::Val(Value::Bool(false))),
            b'K' => {
                let v = take(pos, 1)?[0];
                stack.push(Item::Val(Value::Int(v as i64)))
            }
            b'M' => {
                let b = take(pos, 2)?;
                stack.push(Item::Val(Value::Int(
                    u16::from_le_bytes([b[0], b[1]]) as i64
                )))
            }
            b'J' => {
                let b = take(pos, 4)?;
                stack.push(Item::Val(Value::Int(
                    i32::from_le_bytes(b.try_into()?) as i64
                )))
            }
            0x8a => {
                // LONG1
                let n = take(pos, 1)?[0] as usize;
                let b = take(pos, n)?;
                let v = if n <= 8 {
                    let mut buf = [if b.last().is_some_and(|&x| x & 0x80 != 0) {
                        0xff
                    } else {
                        0
                    }; 8];
                    buf[..n].copy_from_slice(b);
                    Value::Int(i64::from_le_bytes(buf))
                } else {
                    Value::BigInt(b.to_vec())
                };
                stack.push(Item::Val(v))
            }
            b'X' => {
                // BINUNICODE
                let n = u32::from_le_bytes(take(pos, 4)?.try_into()?) as usize;
                stack.push(Item::Val(Value::Str(String::from_utf8(
                    take(pos, n)?.to_vec(),
                )?)))
            }
            b'c' => {
                // GLOBAL "module\nname\n"
                let mut line = || -> Result<String> {
                    let end = bytes[*pos..]
                        .iter()
                        .position(|&b| b == b'\n')
                        .context("pickle: GLOBAL")?;
                    let s = String::from_utf8(bytes[*pos..*pos + end].to_vec())?;
                    *pos += end + 1;
                    Ok(s)
                };
                let (module, name) = (line()?, line()?);
                stack.push(Item::Val(Value::Global(module, name)))
            }
            b't' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Item::Val(Value::Tuple(items)))
            }
            0x85 => {
                let a = pop(&mut stack)?;
                stack.push(Item::Val(Value::Tuple(vec![a])))
            }
            0x86 => {
                let b = pop(&mut stack)?;
                let a = pop(&mut stack)?;
                stack.push(Item::Val(Value::Tuple(vec![a, b])))
            }
            0x87 => {
                let c = pop(&mut stack)?;
                let b = pop(&mut stack)?;
                let a = pop(&mut stack)?;
                stack.push(Item::Val(Value::Tuple(vec![a, b, c])))
            }
            b'Q' => {
                let id = pop(&mut stack)?;
                stack.push(Item::Val(Value::PersistentId(Box::new(id))))
            }
            b'R' => {
                let args = pop(&mut stack)?;
                let f = pop(&mut stack)?;
                stack.push(Item::Val(Value::Reduce(Box::new(f), Box::new(args))))
            }
            b'q' => {
                let k = take(pos, 1)?[0] as u32;
                memo.insert(k, peek(&stack)?);
            }
            b'r' => {
                let k = u32::from_le_bytes(take(pos, 4)?.try_into()?);
                memo.insert(k, peek(&stack)?);
            }
            b'h' => {
                let k = take(pos, 1)?[0] as u32;
                stack.push(Item::Val(memo.get(&k).context("pickle: BINGET")?.clone()))
            }
            b'j' => {
                let k = u32::from_le_bytes(take(pos, 4)?.try_into()?);
                stack.push(Item::Val(
                    memo.get(&k).context("pickle: LONG_BINGET")?.clone(),
                ))
            }
            b'u' | b's' => {
                let items = if op == b'u' {
                    pop_mark(&mut stack)?
                } else {
                    let v = pop(&mut stack)?;
                    let k = pop(&mut stack)?;
                    vec![k, v]
                };
                match stack.last_mut() {
                    Some(Item::Val(Value::Dict(d))) => {
                        d.extend(items.chunks(2).map(|kv| (kv[0].clone(), kv[1].clone())))
                    }
                    _ => bail!("pickle: SETITEMS without a dict"),
                }
            }
            b'e' | b'a' => {
                let items = if op == b'e' {
                    pop_mark(&mut stack)?
                } else {
                    vec![pop(&mut stack)?]
                };
                match stack.last_mut() {
                    Some(Item::Val(Value::List(l))) => l.extend(items),
                    _ => bail!("pickle: APPENDS without a list"),
                }
            }
            other => bail!(
                "pickle: unsupported opcode 0x{other:02x} at byte {}",
                *pos - 1
            ),
        }
    }
}

fn peek(stack: &[Item]) -> Result<Value> {
    match stack.last() {
        Some(Item::Val(v)) => Ok(v.clone()),
        _ => bail!("pickle: PUT on an empty stack"),
    }
}
