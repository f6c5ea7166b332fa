//! Values of the scalar standard types (integers up to 64 bits, `bool`,
//! `char`, `f32`, `f64`) held as a `u64`: the cache keeps such a copy of a
//! field's value where a read needs no borrow and writes nothing.
//!
//! Each function folds to a constant choice for each `T`.

use std::any::{Any, TypeId};

/// Defines `is_word`, `to_word` and `from_word` over the types listed, each
/// with how its values become a word and come back.
macro_rules! each_word {
    ($($t:ty => |$v:ident| $to:expr, |$w:ident| $from:expr;)*) => {
        /// Whether `T`'s values fit a word.
        #[inline(always)]
        pub(crate) fn is_word<T: 'static>() -> bool {
            let t = TypeId::of::<T>();
            false $(|| t == TypeId::of::<$t>())*
        }

        /// `value` as a word, if `T` is a scalar type.
        #[inline(always)]
        pub(crate) fn to_word<T: 'static>(value: &T) -> Option<u64> {
            let any: &dyn Any = value;
            $(
                if let Some(&$v) = any.downcast_ref::<$t>() {
                    return Some($to);
                }
            )*
            None
        }

        /// The value `to_word` made `word` from, if `T` is a scalar type.
        #[inline(always)]
        pub(crate) fn from_word<T: 'static>(word: u64) -> Option<T> {
            let mut value: Option<T> = None;
            let any: &mut dyn Any = &mut value;
            $(
                if let Some(value) = any.downcast_mut::<Option<$t>>() {
                    let $w = word;
                    *value = $from;
                }
            )*
            value
        }
    };
}

/// A copy of `value`, if its type is a scalar: read from the value as
/// stored, without taking a count of it.
#[inline(always)]
pub(crate) fn copy_of<T: 'static>(value: &dyn Any) -> Option<T> {
    if !is_word::<T>() {
        return None;
    }
    from_word(to_word(value.downcast_ref::<T>()?)?)
}

each_word! {
    u64 => |v| v, |w| Some(w);
    i64 => |v| v as u64, |w| Some(w as i64);
    u32 => |v| u64::from(v), |w| u32::try_from(w).ok();
    i32 => |v| v as u64, |w| Some(w as i32);
    usize => |v| v as u64, |w| usize::try_from(w).ok();
    isize => |v| v as u64, |w| Some(w as isize);
    u16 => |v| u64::from(v), |w| u16::try_from(w).ok();
    i16 => |v| v as u64, |w| Some(w as i16);
    u8 => |v| u64::from(v), |w| u8::try_from(w).ok();
    i8 => |v| v as u64, |w| Some(w as i8);
    bool => |v| u64::from(v), |w| Some(w != 0);
    char => |v| u64::from(u32::from(v)), |w| u32::try_from(w).ok().and_then(char::from_u32);
    f64 => |v| v.to_bits(), |w| Some(f64::from_bits(w));
    f32 => |v| u64::from(v.to_bits()), |w| u32::try_from(w).ok().map(f32::from_bits);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: 'static + PartialEq + std::fmt::Debug + Copy>(values: &[T]) {
        assert!(is_word::<T>());
        for value in values {
            let word = to_word(value).expect("a scalar type");
            assert_eq!(from_word::<T>(word), Some(*value));
        }
    }

    #[test]
    fn every_scalar_comes_back_as_it_went() {
        round_trip(&[0u64, 1, u64::MAX]);
        round_trip(&[0i64, -1, i64::MIN, i64::MAX]);
        round_trip(&[0u32, u32::MAX]);
        round_trip(&[-1i32, i32::MIN, i32::MAX]);
        round_trip(&[0usize, usize::MAX]);
        round_trip(&[isize::MIN, -1, isize::MAX]);
        round_trip(&[u16::MAX, 0]);
        round_trip(&[i16::MIN, -1]);
        round_trip(&[u8::MAX, 0]);
        round_trip(&[i8::MIN, -1]);
        round_trip(&[true, false]);
        round_trip(&['\0', 'é', '\u{10FFFF}']);
        round_trip(&[0.0f64, -1.5, f64::INFINITY, f64::MIN_POSITIVE]);
        round_trip(&[0.0f32, -1.5, f32::NEG_INFINITY]);
        let nan = from_word::<f64>(to_word(&f64::NAN).expect("f64")).expect("f64");
        assert!(nan.is_nan());
    }

    #[test]
    fn a_copy_is_made_only_of_a_scalar_of_the_type_asked_for() {
        assert_eq!(copy_of::<u64>(&7u64), Some(7));
        assert_eq!(copy_of::<u32>(&7u64), None);
        assert_eq!(copy_of::<String>(&String::from("x")), None);
    }

    #[test]
    fn other_types_have_no_word() {
        assert!(!is_word::<String>());
        assert!(!is_word::<Option<u64>>());
        assert!(!is_word::<u128>());
        assert_eq!(to_word(&String::from("x")), None);
        assert_eq!(to_word(&7u128), None);
        assert_eq!(from_word::<String>(7), None);
        assert_eq!(from_word::<(u32, u32)>(7), None);
    }

    #[test]
    fn a_word_too_wide_for_the_type_reads_as_none() {
        assert_eq!(from_word::<u8>(256), None);
        assert_eq!(from_word::<char>(0xD800), None);
    }
}
