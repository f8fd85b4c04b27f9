//! The words of generated traffic: channels, campaigns, phone prefixes and Indonesian chat
//! texts, by what they are meant to be (an enquiry, a booking, a payment, small talk, a reply).

pub(crate) const CHANNELS: [(&str, u32); 5] = [
    ("ads", 35),
    ("campaign_blast", 20),
    ("website", 20),
    ("direct", 15),
    ("instagram", 10),
];
pub(crate) const CAMPAIGNS: [&str; 4] = [
    "promo-akhir-tahun",
    "umroh-desember",
    "flash-sale-1212",
    "retargeting-nov",
];
pub(crate) const MOBILE_PREFIXES: [&str; 10] = [
    "811", "812", "813", "821", "822", "852", "857", "878", "895", "896",
];

pub(crate) const LEAD_TEXTS: [&str; 8] = [
    "Halo kak, mau info promo paket umroh dong",
    "Permisi, boleh minta pricelist nya?",
    "Kak, harga paket keluarga berapa ya?",
    "Saya tertarik dengan iklan kemarin, masih ada?",
    "Info dong kak untuk paket bulan depan",
    "Selamat siang, mau tanya PROMO yang di IG",
    "Berapa harga untuk 2 orang kak? Tertarik nih",
    "Halo, saya lihat promo di website, bisa dijelaskan?",
];
pub(crate) const BOOKING_TEXTS: [&str; 6] = [
    "Oke kak, saya mau booking untuk Sabtu",
    "Mau reservasi untuk 2 orang tanggal 12 ya",
    "Tolong jadwalkan konsultasi besok jam 10",
    "Saya mau daftar untuk keberangkatan Desember",
    "Booking satu kamar ya kak",
    "Kak, reservasi atas nama Budi untuk minggu depan",
];
/// Payment texts, one per money format of the contract, and one without an amount.
pub(crate) const PAYMENT_TEXTS: [&str; 9] = [
    "Sudah transfer Rp 1.500.000 ya kak",
    "Sudah bayar Rp1.500.000,00 barusan",
    "Sudah transfer IDR 2,500,000 ke rekening BCA",
    "Kak sudah transfer 350rb untuk DP",
    "Sudah bayar 350 ribu ya",
    "Sudah transfer 1,2jt, mohon dicek",
    "Ini bukti transfer 1.5 juta kak",
    "Sudah lunas 2 juta ya kak",
    "Sudah transfer ya kak, mohon dicek",
];
pub(crate) const SMALL_TALK: [&str; 8] = [
    "Terima kasih kak",
    "Oke siap",
    "Lokasinya di mana ya?",
    "Bisa kirim alamat kantornya?",
    "Jam buka sampai jam berapa kak?",
    "Baik, nanti saya kabari lagi",
    "Apakah bisa dicicil?",
    "Wah mantap, promosi nya menarik",
];
pub(crate) const AGENT_REPLIES: [&str; 7] = [
    "Halo kak! Paket mulai Rp 25.000.000, mau dijadwalkan konsultasi?",
    "Baik kak, berikut pricelist terbaru kami",
    "Terima kasih sudah menghubungi kami, ada yang bisa dibantu?",
    "Siap kak, booking untuk Sabtu sudah kami catat",
    "Pembayaran sudah lunas, terima kasih kak",
    "Mohon ditunggu ya kak, kami cek dulu",
    "Untuk rebooking silakan hubungi admin",
];
