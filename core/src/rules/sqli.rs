//! SQL injection detection by tokenizing: does a value, read where an injection lands,
//! change the SQL context?
//!
//! An injected value is pasted into a query in one of three places: as a bare operand
//! (`WHERE id=<value>`), inside a single-quoted string or inside a double-quoted string. For
//! each place the value is lexed as SQL from that starting state, and the first few tokens
//! are judged: a value is an injection when it leaves the operand or string and continues
//! with SQL that does something (a boolean, a UNION, a stacked statement, a comment that cuts
//! the rest of the query, …). Ordinary text rarely lexes that way: prose has no closing quote
//! followed by `or 1=1`, and a number followed by words is not a boolean expression.
//!
//! The lexer looks at a bounded number of tokens per context and never backtracks, so the
//! cost is linear in the value (strings and comments are skipped by scanning forward once);
//! nothing is allocated.

/// How many significant tokens a context is judged on; injections show themselves early.
const MAX_TOKENS: usize = 16;

/// Token kinds after folding keywords into classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum K {
    /// A quoted string literal.
    Str,
    /// A number, `0x…` literal, or `null`/`true`/`false`.
    Num,
    /// `@var` or `@@system_var`.
    Var,
    /// Arithmetic, comparison or bit operator.
    Op,
    /// A comparison written as a word (`like`, `in`, `is`, `between`, `regexp`).
    Cmp,
    /// `and`, `or`, `xor`, `not`, `&&`, `||`.
    Logic,
    /// `union` (and the other set operators).
    Union,
    /// `select`.
    Select,
    /// A statement that starts a stacked query (`drop`, `insert`, `exec`, `waitfor`, …).
    Stmt,
    /// A clause word (`from`, `where`, `order`, `by`, `having`, `limit`, `into`, …).
    Clause,
    /// A name followed by `(`.
    Func,
    /// Any other word or quoted identifier.
    Word,
    LPar,
    RPar,
    Comma,
    Semi,
    /// A comment that runs to the end of the query (`--`, `#`, unclosed `/*`).
    Comment,
    /// Punctuation SQL has no use for here.
    Other,
}

/// Keywords some judgements name individually.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kw {
    None,
    /// `null`, `true`, `false`: values, but also ordinary words.
    Value,
    Not,
    By,
    Order,
    Group,
    Having,
    Limit,
    Into,
    Outfile,
    From,
    Where,
    All,
    Distinct,
    Delay,
    Table,
    Set,
    Procedure,
    Insert,
    Delete,
    Drop,
    Update,
    Exec,
    Declare,
    Waitfor,
    Shutdown,
    Truncate,
    Create,
    Alter,
}

#[derive(Debug, Clone, Copy)]
struct Tok {
    k: K,
    kw: Kw,
    /// Func: a function an attacker uses to probe or stall (`sleep`, `benchmark`, `char`…).
    /// Var: a `@@system` variable. Str: closed by its quote.
    strong: bool,
    /// Str: no characters between the quotes. Comment: it is `#`. Op: a comparison.
    flag: bool,
    /// Str: its content has whitespace (reads like prose rather than a single value).
    /// Comment: `--` followed by whitespace or the end, as MySQL requires.
    spaced: bool,
    /// Str: its quote character.
    quote: u8,
}

impl Tok {
    const fn new(k: K) -> Tok {
        Tok {
            k,
            kw: Kw::None,
            strong: false,
            flag: false,
            spaced: false,
            quote: 0,
        }
    }
}

/// Words with a class, compared ASCII case-insensitively.
const WORDS: &[(&str, K, Kw)] = &[
    ("and", K::Logic, Kw::None),
    ("or", K::Logic, Kw::None),
    ("xor", K::Logic, Kw::None),
    ("not", K::Logic, Kw::Not),
    ("union", K::Union, Kw::None),
    ("intersect", K::Union, Kw::None),
    ("select", K::Select, Kw::None),
    ("like", K::Cmp, Kw::None),
    ("rlike", K::Cmp, Kw::None),
    ("regexp", K::Cmp, Kw::None),
    ("in", K::Cmp, Kw::None),
    ("is", K::Cmp, Kw::None),
    ("between", K::Cmp, Kw::None),
    ("sounds", K::Cmp, Kw::None),
    ("div", K::Op, Kw::None),
    ("mod", K::Op, Kw::None),
    ("null", K::Num, Kw::Value),
    ("true", K::Num, Kw::Value),
    ("false", K::Num, Kw::Value),
    ("from", K::Clause, Kw::From),
    ("where", K::Clause, Kw::Where),
    ("order", K::Clause, Kw::Order),
    ("group", K::Clause, Kw::Group),
    ("by", K::Clause, Kw::By),
    ("having", K::Clause, Kw::Having),
    ("limit", K::Clause, Kw::Limit),
    ("into", K::Clause, Kw::Into),
    ("outfile", K::Clause, Kw::Outfile),
    ("dumpfile", K::Clause, Kw::Outfile),
    ("procedure", K::Clause, Kw::Procedure),
    ("all", K::Clause, Kw::All),
    ("distinct", K::Clause, Kw::Distinct),
    ("delay", K::Clause, Kw::Delay),
    ("time", K::Clause, Kw::Delay),
    ("table", K::Clause, Kw::Table),
    ("database", K::Clause, Kw::Table),
    ("schema", K::Clause, Kw::Table),
    ("user", K::Clause, Kw::Table),
    ("set", K::Clause, Kw::Set),
    ("insert", K::Stmt, Kw::Insert),
    ("delete", K::Stmt, Kw::Delete),
    ("drop", K::Stmt, Kw::Drop),
    ("update", K::Stmt, Kw::Update),
    ("exec", K::Stmt, Kw::Exec),
    ("execute", K::Stmt, Kw::Exec),
    ("declare", K::Stmt, Kw::Declare),
    ("waitfor", K::Stmt, Kw::Waitfor),
    ("shutdown", K::Stmt, Kw::Shutdown),
    ("truncate", K::Stmt, Kw::Truncate),
    ("create", K::Stmt, Kw::Create),
    ("alter", K::Stmt, Kw::Alter),
];

/// Functions whose call is itself evidence: timing, file access, error-based extraction,
/// character building and fingerprinting.
const STRONG_FUNCS: &[&str] = &[
    "sleep",
    "benchmark",
    "pg_sleep",
    "char",
    "chr",
    "nchar",
    "concat",
    "concat_ws",
    "group_concat",
    "load_file",
    "extractvalue",
    "updatexml",
    "ascii",
    "substring",
    "substr",
    "mid",
    "version",
    "database",
    "user",
    "current_user",
    "system_user",
    "if",
    "iif",
    "ifnull",
    "isnull",
    "cast",
    "convert",
    "count",
    "hex",
    "unhex",
    "md5",
    "sha1",
    "ord",
    "length",
    "len",
    "randomblob",
    "receive_message",
    "xp_cmdshell",
    "make_set",
    "elt",
    "exp",
    "floor",
    "rand",
    "name_const",
    "row",
    "coalesce",
    "case",
    "db_name",
    "schema_name",
    "table_name",
    "utl_inaddr",
    "get_host_address",
    "dbms_pipe",
    "sysdate",
    "now",
    "instr",
    "locate",
    "position",
    "least",
    "greatest",
    "json_extract",
    "xmltype",
    "ctxsys",
    "drithsx",
];

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c | 0xa0)
}

struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Lexer<'a> {
    /// Skips whitespace and closed inline comments; `/*!` (MySQL executes its content) is
    /// skipped as an opener so the content is lexed, and a stray `*/` is skipped too.
    fn skip_blank(&mut self) -> Option<Tok> {
        let s = self.s;
        loop {
            while self.i < s.len() && is_space(s[self.i]) {
                self.i += 1;
            }
            if s[self.i..].starts_with(b"/*") {
                if s.get(self.i + 2) == Some(&b'!') {
                    self.i += 3;
                    while self.i < s.len() && s[self.i].is_ascii_digit() {
                        self.i += 1;
                    }
                    continue;
                }
                match memchr::memmem::find(&s[self.i + 2..], b"*/") {
                    Some(off) => {
                        self.i += 2 + off + 2;
                        if self.i >= s.len() {
                            // A comment ending the value cuts off what the query had after.
                            let mut t = Tok::new(K::Comment);
                            t.strong = true;
                            return Some(t);
                        }
                    }
                    None => {
                        self.i = s.len();
                        return Some(Tok::new(K::Comment));
                    }
                }
                continue;
            }
            if s[self.i..].starts_with(b"*/") {
                self.i += 2;
                continue;
            }
            return None;
        }
    }

    fn next(&mut self) -> Option<Tok> {
        if let Some(t) = self.skip_blank() {
            return Some(t);
        }
        let s = self.s;
        let c = *s.get(self.i)?;
        let start = self.i;
        self.i += 1;
        let t = match c {
            b'\'' | b'"' => {
                let (end, closed) = string_end(s, self.i, c);
                let mut t = Tok::new(K::Str);
                t.strong = closed;
                t.flag = end == self.i;
                t.spaced = s[self.i..end].iter().any(|&b| is_space(b));
                t.quote = c;
                self.i = if closed { end + 1 } else { end };
                t
            }
            b'`' => {
                self.i = memchr::memchr(b'`', &s[self.i..]).map_or(s.len(), |o| self.i + o + 1);
                Tok::new(K::Word)
            }
            // `#2` is a number sign far more often than a MySQL comment.
            b'#' if s.get(self.i).is_some_and(u8::is_ascii_digit) => Tok::new(K::Other),
            b'#' => {
                self.i = s.len();
                let mut t = Tok::new(K::Comment);
                t.flag = true;
                t
            }
            b'-' if s.get(self.i) == Some(&b'-') => {
                let mut t = Tok::new(K::Comment);
                t.spaced = s.get(self.i + 1).is_none_or(|&b| is_space(b));
                self.i = s.len();
                t
            }
            b'(' => Tok::new(K::LPar),
            b')' => Tok::new(K::RPar),
            b',' => Tok::new(K::Comma),
            b';' => Tok::new(K::Semi),
            b'@' => {
                let sys = s.get(self.i) == Some(&b'@');
                if sys {
                    self.i += 1;
                }
                while self.i < s.len() && (is_word_byte(s[self.i]) || s[self.i] == b'.') {
                    self.i += 1;
                }
                let mut t = Tok::new(K::Var);
                t.strong = sys;
                t
            }
            b'|' if s.get(self.i) == Some(&b'|') => {
                self.i += 1;
                Tok::new(K::Logic)
            }
            b'&' if s.get(self.i) == Some(&b'&') => {
                self.i += 1;
                Tok::new(K::Logic)
            }
            b'=' | b'<' | b'>' | b'!' | b'+' | b'-' | b'*' | b'/' | b'%' | b'^' | b'|' | b'&'
            | b'~' | b':' => {
                while self.i < s.len() && matches!(s[self.i], b'=' | b'<' | b'>') {
                    self.i += 1;
                }
                let mut t = Tok::new(K::Op);
                t.flag = s[start..self.i]
                    .iter()
                    .any(|b| matches!(b, b'=' | b'<' | b'>'));
                t
            }
            b'0'..=b'9' | b'.' if c != b'.' || s.get(self.i).is_some_and(u8::is_ascii_digit) => {
                if c == b'0' && matches!(s.get(self.i), Some(b'x' | b'X' | b'b' | b'B')) {
                    self.i += 1;
                    while self.i < s.len() && s[self.i].is_ascii_hexdigit() {
                        self.i += 1;
                    }
                } else {
                    while self.i < s.len() && (s[self.i].is_ascii_digit() || s[self.i] == b'.') {
                        self.i += 1;
                    }
                    if matches!(s.get(self.i), Some(b'e' | b'E'))
                        && s.get(self.i + 1)
                            .is_some_and(|b| b.is_ascii_digit() || *b == b'-' || *b == b'+')
                    {
                        self.i += 2;
                        while self.i < s.len() && s[self.i].is_ascii_digit() {
                            self.i += 1;
                        }
                    }
                }
                Tok::new(K::Num)
            }
            b'.' => Tok::new(K::Other),
            _ if is_word_byte(c) => {
                while self.i < s.len()
                    && (is_word_byte(s[self.i])
                        || s[self.i] == b'@'
                        || (s[self.i] == b'.'
                            && s.get(self.i + 1)
                                .is_some_and(|&b| is_word_byte(b) || b == b'.')))
                {
                    self.i += 1;
                }
                self.word(&s[start..self.i])
            }
            _ => Tok::new(K::Other),
        };
        Some(t)
    }

    fn word(&mut self, w: &[u8]) -> Tok {
        // A word followed by `(` (possibly across blanks or comments) is a call.
        let save = self.i;
        let before_paren = self.skip_blank().is_none() && self.s.get(self.i) == Some(&b'(');
        self.i = save;
        if before_paren {
            let name = match memchr::memrchr(b'.', w) {
                Some(d) => &w[d + 1..],
                None => w,
            };
            let class = WORDS
                .iter()
                .find(|(n, _, _)| n.as_bytes().eq_ignore_ascii_case(w));
            // Keywords that take a parenthesis keep their class: `union(select`, `in (1)`.
            if let Some((_, k, kw)) = class {
                if !matches!(k, K::Clause | K::Stmt) {
                    return Tok {
                        k: *k,
                        kw: *kw,
                        ..Tok::new(*k)
                    };
                }
            }
            let mut t = Tok::new(K::Func);
            t.strong = STRONG_FUNCS
                .iter()
                .any(|f| f.as_bytes().eq_ignore_ascii_case(name));
            if let Some((_, K::Stmt, kw)) = class {
                t.kw = *kw;
            }
            return t;
        }
        match WORDS
            .iter()
            .find(|(n, _, _)| n.as_bytes().eq_ignore_ascii_case(w))
        {
            Some((_, k, kw)) => Tok {
                k: *k,
                kw: *kw,
                ..Tok::new(*k)
            },
            None => {
                // System procedures make `exec <word>` a statement rather than prose.
                let mut t = Tok::new(K::Word);
                t.strong = [&b"xp_"[..], b"sp_", b"master."]
                    .iter()
                    .any(|p| w.len() > p.len() && w[..p.len()].eq_ignore_ascii_case(p));
                t
            }
        }
    }
}

/// The end of a string that started before `from`, and whether a quote closed it. A doubled
/// quote is an escaped quote and does not close.
fn string_end(s: &[u8], mut from: usize, q: u8) -> (usize, bool) {
    while let Some(off) = memchr::memchr(q, &s[from..]) {
        let at = from + off;
        if s.get(at + 1) == Some(&q) {
            from = at + 2;
            continue;
        }
        return (at, true);
    }
    (s.len(), false)
}

/// Where the value is pasted into the query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Bare,
    Quoted,
}

/// The significant tokens of one context (at most [`MAX_TOKENS`]).
struct Toks {
    t: [Tok; MAX_TOKENS],
    n: usize,
}

impl Toks {
    fn get(&self, i: usize) -> Option<Tok> {
        (i < self.n).then(|| self.t[i])
    }
    fn kind(&self, i: usize) -> Option<K> {
        self.get(i).map(|t| t.k)
    }
}

fn lex(s: &[u8], start: usize, first: Option<Tok>) -> Toks {
    let mut out = Toks {
        t: [Tok::new(K::Other); MAX_TOKENS],
        n: 0,
    };
    if let Some(f) = first {
        out.t[0] = f;
        out.n = 1;
    }
    let mut lx = Lexer { s, i: start };
    while out.n < MAX_TOKENS {
        let Some(t) = lx.next() else { break };
        out.t[out.n] = t;
        out.n += 1;
        if t.k == K::Comment {
            break;
        }
    }
    out
}

fn is_operand(k: K) -> bool {
    matches!(k, K::Num | K::Str | K::Var | K::Word | K::Func)
}

/// What an expression (operators, operands, parentheses, commas) starting at a token holds.
#[derive(Default)]
struct Walk {
    /// The first token after the expression.
    end: usize,
    /// A comparison operator was seen…
    cmp: bool,
    /// …and an operand after it.
    rhs: bool,
    /// An operator right before a string left open at the end of the value: the query's own
    /// closing quote completes it (`'-'`, `A '>=' B`).
    op_str: bool,
    /// A subquery, a probing function or a `@@system` variable.
    strong: bool,
}

fn walk(ts: &Toks, mut i: usize, words: bool) -> Walk {
    let mut w = Walk::default();
    let mut prev_op = false;
    let mut prev_operand = false;
    // The string the value closed (quoted contexts) decides which quote the query adds.
    let lead = ts.t[0];
    while let Some(t) = ts.get(i) {
        let operand = match t.k {
            K::Op | K::Cmp => {
                w.cmp |= t.k == K::Cmp || t.flag;
                // `"LIKE" STAMP`: a quoted word, not an operator between two strings.
                prev_op = !(t.k == K::Cmp && lead.flag && i == 1);
                prev_operand = false;
                i += 1;
                continue;
            }
            K::Str => {
                w.op_str |= prev_op && !t.strong && lead.k == K::Str && t.quote == lead.quote;
                true
            }
            K::Num => true,
            K::Var | K::Func => {
                w.strong |= t.strong;
                true
            }
            K::Word => words,
            K::Select => {
                w.strong = true;
                break;
            }
            K::LPar | K::RPar | K::Comma => false,
            _ => break,
        };
        if !operand && t.k == K::Word || operand && prev_operand {
            break;
        }
        w.rhs |= operand && w.cmp;
        if operand {
            prev_op = false;
        }
        prev_operand = operand;
        i += 1;
    }
    w.end = i;
    w
}

/// Judges what follows an operand (a closed string, or the leading number or word of a bare
/// value), starting at token `i`.
fn after_operand(ts: &Toks, mut i: usize, ctx: Ctx, lead: K) -> bool {
    let mut closes = 0;
    while ts.kind(i) == Some(K::RPar) {
        closes += 1;
        i += 1;
    }
    let quoted = ctx == Ctx::Quoted;
    // A value that started as code (a number, a closed string) rather than a word of prose.
    let code = quoted || lead != K::Word;
    let Some(t) = ts.get(i) else {
        return false;
    };
    match t.k {
        K::Comment => {
            if !quoted {
                // `1 --`, `-1#`: a numeric parameter cut short; `TRUE#LAST` is a word.
                let numeric = ts.t[..i].iter().any(|t| t.k == K::Num && t.kw != Kw::Value);
                return closes > 0 || (lead == K::Num && numeric);
            }
            // After a quote closing prose (`SIZE 20" --CHILD`, `SOAP 1 '#`) only a comment
            // that every dialect reads as one counts.
            let lead_tok = ts.t[0];
            let prose = (lead_tok.spaced || lead_tok.flag) && closes == 0;
            !prose || (!t.flag && t.spaced) || (lead_tok.flag && !t.flag)
        }
        K::Logic => t.kw != Kw::Not && boolean(ts, i + 1, ctx, lead),
        K::Union => {
            (code && lead != K::Word && ts.n == i + 1)
                || matches!(ts.kind(i + 1), Some(K::Select | K::LPar))
                || (ts
                    .get(i + 1)
                    .is_some_and(|t| matches!(t.kw, Kw::All | Kw::Distinct))
                    && matches!(ts.kind(i + 2), Some(K::Select | K::LPar)))
        }
        K::Select => code && lead != K::Word && select_list(ts, i + 1),
        K::Semi => match ts.get(i + 1) {
            None => false,
            Some(n) => stmt(ts, i + 1) || n.k == K::Select || (quoted && n.k == K::Comment),
        },
        K::Clause => match t.kw {
            Kw::Order | Kw::Group => ts.get(i + 1).is_some_and(|n| n.kw == Kw::By),
            Kw::Having => (code || closes > 0) && comparison(ts, i + 1),
            Kw::Limit => (code || closes > 0) && ts.kind(i + 1) == Some(K::Num),
            Kw::Into => ts.get(i + 1).is_some_and(|n| n.kw == Kw::Outfile),
            Kw::Procedure => quoted || closes > 0,
            Kw::Where | Kw::From => (quoted || closes > 0) && comparison(ts, i + 1),
            _ => false,
        },
        K::Stmt => (quoted || closes > 0 || lead == K::Num) && stmt(ts, i),
        K::Op | K::Cmp => {
            if !code {
                let w = walk(ts, i, false);
                return w.strong && closes > 0;
            }
            let w = walk(ts, i, quoted);
            if w.strong || (quoted && w.op_str) {
                return true;
            }
            // `1 div 1 union …`, `'^0+0=0 or …`: judge what follows the expression.
            matches!(
                ts.kind(w.end),
                Some(K::Logic | K::Union | K::Comment | K::Semi | K::Clause | K::Stmt)
            ) && (w.cmp || lead == K::Num || ts.kind(w.end) != Some(K::Comment))
                && after_operand(ts, w.end, ctx, lead)
        }
        K::Func => t.strong && (quoted || closes > 0),
        _ => false,
    }
}

/// After `select`: a select list rather than an English object.
fn select_list(ts: &Toks, i: usize) -> bool {
    match ts.get(i) {
        Some(n) => match n.k {
            K::Num | K::Str | K::Var | K::LPar | K::Op | K::Func => true,
            K::Word => {
                matches!(ts.kind(i + 1), Some(K::Comma))
                    || ts.get(i + 1).is_some_and(|x| x.kw == Kw::From)
            }
            K::Clause => matches!(n.kw, Kw::All | Kw::Distinct),
            _ => false,
        },
        None => false,
    }
}

/// After `and`/`or`: is this a boolean an attacker controls (`1=1`, `'a'='a`, `sleep(5)`,
/// `(select …)`, `true`)?
fn boolean(ts: &Toks, mut i: usize, ctx: Ctx, lead: K) -> bool {
    let quoted = ctx == Ctx::Quoted;
    let code = quoted || lead != K::Word;
    let mut parens = 0;
    while let Some(t) = ts.get(i) {
        match t.k {
            K::LPar => parens += 1,
            K::Op => {}
            K::Logic if t.kw == Kw::Not => {}
            _ => break,
        }
        i += 1;
    }
    let Some(a) = ts.get(i) else { return false };
    match a.k {
        K::Select => true,
        K::Func => a.strong || code,
        K::Var => a.strong || ts.get(i + 1).is_some_and(|n| n.k == K::Op && n.flag),
        K::Num | K::Str | K::Word => {
            let next = ts.get(i + 1);
            let w = walk(ts, i, code);
            // Bare words on both sides read like prose ("black or white = good") unless the
            // value itself started as code.
            if w.strong || (quoted && w.op_str) || (w.cmp && w.rhs && (code || a.k != K::Word)) {
                return true;
            }
            match next.map(|n| n.k) {
                None | Some(K::Comment | K::Semi | K::RPar) => {
                    a.k == K::Num && (quoted || parens > 0)
                }
                _ => false,
            }
        }
        _ => false,
    }
}

/// `x = y` (or `x like y`, `x in (…)`) starting at `i`.
fn comparison(ts: &Toks, i: usize) -> bool {
    ts.kind(i).is_some_and(is_operand)
        && ts
            .get(i + 1)
            .is_some_and(|t| t.k == K::Cmp || (t.k == K::Op && t.flag))
        && ts
            .kind(i + 2)
            .is_some_and(|k| is_operand(k) || k == K::LPar)
}

/// A statement that does something on its own, starting at `i`.
fn stmt(ts: &Toks, i: usize) -> bool {
    let Some(t) = ts.get(i) else { return false };
    let n = ts.get(i + 1);
    match t.kw {
        Kw::Insert => n.is_some_and(|n| n.kw == Kw::Into),
        Kw::Delete => n.is_some_and(|n| n.kw == Kw::From),
        Kw::Drop | Kw::Truncate | Kw::Create | Kw::Alter => n.is_some_and(|n| n.kw == Kw::Table),
        Kw::Update => {
            n.is_some_and(|n| n.k == K::Word) && ts.get(i + 2).is_some_and(|n| n.kw == Kw::Set)
        }
        Kw::Exec => t.k == K::Func || n.is_some_and(|n| matches!(n.k, K::Str | K::Var) || n.strong),
        Kw::Declare => n.is_some_and(|n| n.k == K::Var),
        Kw::Waitfor => n.is_some_and(|n| n.kw == Kw::Delay),
        Kw::Shutdown => true,
        _ => false,
    }
}

/// Pairs that are SQL wherever they stand: `union select`, `(select 1`, and, in a value
/// that opened a parenthesis, a closing parenthesis cut off by a comment.
fn anywhere(ts: &Toks, opened: bool) -> bool {
    let mut code = false;
    for i in 0..ts.n {
        let t = ts.t[i];
        match t.k {
            K::Union => {
                let n = ts.get(i + 1);
                let modifier = n.is_some_and(|n| matches!(n.kw, Kw::All | Kw::Distinct));
                let at = if modifier { i + 2 } else { i + 1 };
                if ts.kind(at) == Some(K::Select)
                    || (ts.kind(at) == Some(K::LPar) && ts.kind(at + 1) == Some(K::Select))
                {
                    return true;
                }
            }
            K::LPar if ts.kind(i + 1) == Some(K::Select) => {
                let after = ts.get(i + 2);
                if after.is_none_or(|a| a.k != K::Word) || select_list(ts, i + 2) {
                    return true;
                }
            }
            K::RPar if opened && code && ts.kind(i + 1) == Some(K::Comment) => return true,
            K::Str | K::Num | K::Var | K::Logic | K::Op | K::Func | K::Select => code = true,
            _ => {}
        }
    }
    false
}

/// A value read as a bare operand: `1 or 1=1`, `1 union select`, `(select …)`, `sleep(5)`.
fn bare(s: &[u8]) -> bool {
    let ts = lex(s, 0, None);
    let mut i = 0;
    let mut opens = 0;
    while let Some(t) = ts.get(i) {
        match t.k {
            K::LPar => opens += 1,
            K::Op => {}
            _ => break,
        }
        i += 1;
    }
    if anywhere(&ts, opens > 0) {
        return true;
    }
    let Some(t) = ts.get(i) else { return false };
    match t.k {
        K::Num | K::Str | K::Var | K::Word => {
            after_operand(&ts, i + 1, Ctx::Bare, t.k)
                || (t.k == K::Var && t.strong && ts.n == i + 1)
        }
        K::Select => opens > 0 || select_list(&ts, i + 1) && ts.kind(i + 1) != Some(K::Word),
        K::Union => after_operand(&ts, i, Ctx::Bare, K::Word),
        K::Stmt => stmt(&ts, i),
        K::Semi => stmt(&ts, i + 1) || ts.kind(i + 1) == Some(K::Select),
        K::Func if t.kw == Kw::Exec => true,
        K::Func => {
            t.strong
                && (opens > 0 || {
                    // `sleep(5)`: the call is the whole value or is followed by SQL.
                    let mut j = i + 1;
                    let mut depth = 0i32;
                    while let Some(k) = ts.kind(j) {
                        match k {
                            K::LPar => depth += 1,
                            K::RPar => {
                                depth -= 1;
                                if depth <= 0 {
                                    break;
                                }
                            }
                            _ => {}
                        }
                        j += 1;
                    }
                    depth == 0 && j < ts.n && {
                        let rest = ts.kind(j + 1);
                        rest.is_none()
                            || matches!(
                                rest,
                                Some(K::Logic | K::Op | K::Comment | K::Semi | K::Cmp)
                            )
                    }
                })
        }
        _ => false,
    }
}

/// A value read as the rest of a string opened with `q`: the string must close inside the
/// value and SQL must follow.
fn quoted(s: &[u8], q: u8) -> bool {
    let (end, closed) = string_end(s, 0, q);
    if !closed {
        return false;
    }
    let mut first = Tok::new(K::Str);
    first.strong = true;
    first.flag = end == 0;
    first.spaced = s[..end].iter().any(|&b| is_space(b));
    first.quote = q;
    let ts = lex(s, end + 1, Some(first));
    after_operand(&ts, 1, Ctx::Quoted, K::Str) || anywhere(&ts, false)
}

/// Finds SQL injection in `v`; returns the span of the value judged (the whole value).
///
/// Ordinary text is rejected cheaply: the quoted contexts run only when the value holds that
/// quote (one `memchr` each), and the bare context stops after [`MAX_TOKENS`] tokens, so
/// prose costs a few word comparisons however long it is.
pub(crate) fn sqli(v: &[u8]) -> Option<(usize, usize)> {
    if v.is_empty() {
        return None;
    }
    let hit = (memchr::memchr(b'\'', v).is_some() && quoted(v, b'\''))
        || (memchr::memchr(b'"', v).is_some() && quoted(v, b'"'))
        || bare(v);
    hit.then_some((0, v.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hit(s: &str) -> bool {
        sqli(s.as_bytes()).is_some()
    }

    #[test]
    fn attacks() {
        for a in [
            "' or 1=1--",
            "admin'--",
            "admin' #",
            "x' OR 'a'='a",
            "\" or \"\"=\"",
            "1 or 1=1",
            "1) or (1=1",
            "-1 UNION SELECT password FROM users",
            "1/**/UnIoN/**/SeLeCt/**/1,2",
            "1 /*!50000union*/ /*!50000select*/ 1",
            "' union all select null,null--",
            "1; DROP TABLE users",
            "x'; exec xp_cmdshell 'dir'--",
            "1 and sleep(5)",
            "' AND BENCHMARK(5000000,MD5(1))#",
            "'; waitfor delay '0:0:5'--",
            "1' and 0x41=0x41 --",
            "' || pg_sleep(10) || '",
            "(select 1 from dual)",
            "' order by 3--",
            "1 having 1=1",
            "' and (select count(*) from users)>0 and '1'='1",
            "sleep(5)",
            "' or true--",
            "') or ('x')=('x",
            "1 AND 0x61=0x61",
            "x'||pg_sleep(2)||'",
            "1;select pg_sleep(3)",
        ] {
            assert!(hit(a), "{a}");
        }
    }

    #[test]
    fn benign() {
        for b in [
            "O'Reilly",
            "it's fine",
            "it's -- fine",
            "john.doe@example.com",
            "1-2",
            "a=b&c=d",
            "How do I select all rows from a table where age > 30 in SQL?",
            "rock 'n' roll",
            "\"#2 MOM\"",
            "cats and dogs",
            "10 or more",
            "3 and 4",
            "1 (917) 666-0987",
            "\"3 1'/3",
            "don't or won't",
            "select the best answer",
            "",
            "2024-01-01",
            "Which SQL query lists the customers who ordered more than five items?",
            "union members select a new chair",
        ] {
            assert!(!hit(b), "{b}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn never_panics(v in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = sqli(&v);
        }

        #[test]
        fn never_panics_sqlish(v in "[ '\"()=;#/*!@x01a-z-]{0,60}") {
            let _ = sqli(v.as_bytes());
        }
    }
}
